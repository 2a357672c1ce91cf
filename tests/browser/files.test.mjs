// Files and images on the page, against the running pollcast:
// - ann picks a PNG with the attach button; bob's page shows it inline as an <img> whose
//   src is a blob: URL (fetched over the socket), decoded to its real size;
// - a text file arrives as a download button; clicking it saves the file under its name
//   with its bytes (a Blob URL and the `download` attribute);
// - an SVG with markup in its name is never drawn: a download button, the name as text;
// - a phone-sized page joining later finds the image in history, inline, and passes axe.
// Screenshots: files-image.png, files-download.png, files-phone.png in test-artifacts/.
//
// usage: POLLCAST_URL=http://127.0.0.1:PORT/ node --test files.test.mjs
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { DESKTOP, PHONE, assertAccessible, assertControlsReachable, launch, screenshot } from "./lib.mjs";

const BASE = process.env.POLLCAST_URL;
if (!BASE) throw new Error("set POLLCAST_URL to the server's http://HOST:PORT/");
const TEST = { timeout: 30000 };
setTimeout(() => {
  console.error("files test: over 80 s, giving up");
  process.exit(1);
}, 80000).unref();

let chrome, ann, bob;
const url = (query) => new URL("/?" + query, BASE).href;
const fileItem = (page, name) => page.locator("#messages li[data-kind=file]", { has: page.locator(`button[data-name="${name}"]`) });

/** Picks `file` ({name, mimeType, buffer}) with the attach button, as a person would. */
async function attach(page, file) {
  const [chooser] = await Promise.all([page.waitForEvent("filechooser"), page.click("#attach-button")]);
  await chooser.setFiles(file);
}

before(async () => {
  chrome = await launch();
  ann = await chrome.open(url("name=ann-f&room=files"), { device: DESKTOP });
  bob = await chrome.open(url("name=bob-f&room=files"), { device: DESKTOP });
  for (const page of [ann, bob]) await page.locator('#status[data-state="open"]').waitFor();
  await ann.locator('#members li[data-member="bob-f"]').waitFor();
});
after(async () => { await chrome?.close(); });

test("an image is shown inline from a blob: URL on the other page", TEST, async () => {
  // A 64×48 PNG drawn on a canvas (red and blue halves).
  const dataUrl = await ann.evaluate(() => {
    const canvas = Object.assign(document.createElement("canvas"), { width: 64, height: 48 });
    const g = canvas.getContext("2d");
    g.fillStyle = "#d00"; g.fillRect(0, 0, 32, 48);
    g.fillStyle = "#00d"; g.fillRect(32, 0, 32, 48);
    return canvas.toDataURL("image/png");
  });
  const png = Buffer.from(dataUrl.split(",")[1], "base64");
  await attach(ann, { name: "halves.png", mimeType: "image/png", buffer: png });
  for (const page of [bob, ann]) {
    const img = fileItem(page, "halves.png").locator("img");
    await img.waitFor();
    await page.waitForFunction((node) => node.complete && node.naturalWidth > 0, await img.elementHandle());
    assert.match(await img.getAttribute("src"), /^blob:/);
    assert.equal(await img.getAttribute("alt"), "halves.png");
    assert.deepEqual(await img.evaluate((node) => [node.naturalWidth, node.naturalHeight]), [64, 48]);
  }
  await screenshot(bob, "files-image.png");
});

test("another type is a download button that saves the file under its name", TEST, async () => {
  const text = "pollcast file body\nline two\n";
  await attach(ann, { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from(text) });
  const item = fileItem(bob, "notes.txt");
  await item.waitFor();
  assert.equal(await item.locator("img").count(), 0, "not an image: nothing drawn");
  const button = item.locator("button.download");
  assert.match(await button.textContent(), /^Download notes\.txt \(\d+ B\)$/);
  const [download] = await Promise.all([bob.waitForEvent("download"), button.click()]);
  assert.equal(download.suggestedFilename(), "notes.txt");
  assert.equal(readFileSync(await download.path(), "utf8"), text);
  assert.match(download.url(), /^blob:/);
  await screenshot(bob, "files-download.png");
});

test("SVG and markup in a name are never rendered", TEST, async () => {
  const name = "<img src=x onerror=window.pwned=1>.svg";
  const svg = "<svg xmlns='http://www.w3.org/2000/svg' onload='window.pwned=2'><rect width='9' height='9'/></svg>";
  await attach(ann, { name, mimeType: "image/svg+xml", buffer: Buffer.from(svg) });
  const item = fileItem(bob, name);
  await item.waitFor();
  assert.equal(await item.locator("img").count(), 0, "image/svg+xml is not drawn");
  assert.equal(await item.locator("button.download").textContent(), `Download ${name} (${svg.length} B)`, "the name is text");
  assert.equal(await bob.evaluate(() => window.pwned), undefined);
  assert.equal(await bob.locator("#messages img:not([data-file])").count(), 0, "no element came from the name");
});

test("phone: a late joiner sees the image in history, inline, and the page passes axe", TEST, async () => {
  const phone = await chrome.open(url("name=pia-f&room=files"), { device: PHONE });
  await phone.locator('#status[data-state="open"]').waitFor();
  const img = fileItem(phone, "halves.png").locator("img");
  await img.waitFor();
  await phone.waitForFunction((node) => node.complete && node.naturalWidth === 64, await img.elementHandle());
  assert.match(await img.getAttribute("src"), /^blob:/);
  await fileItem(phone, "notes.txt").waitFor();
  assert.equal(await phone.isVisible("#attach-button"), true);
  await assertControlsReachable(phone, "the phone page with files");
  await assertAccessible(phone, "phone with files");
  await screenshot(phone, "files-phone.png");
});
