// The page on a phone and for everyone (issue 12), against the running pollcast:
// - a phone-sized page (390×844) chats with a desktop one, opens the member list from the
//   header and starts a direct message from it; every control stays inside the screen and
//   uncovered, and the message box follows the viewport when a keyboard takes its lower part;
// - axe-core finds no serious or critical violation at 390×844 and 1200×800, in the light
//   and the dark colour scheme, with the drawers closed and open, and in the name dialog.
// Screenshots: phone-*.png and desktop-*.png in test-artifacts/ (-dark for the dark scheme).
//
// usage: POLLCAST_URL=http://127.0.0.1:PORT/ node --test layout.test.mjs
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { DESKTOP, PHONE, WAIT, assertAccessible, assertControlsReachable, launch, message, say, screenshot } from "./lib.mjs";

const BASE = process.env.POLLCAST_URL;
if (!BASE) throw new Error("set POLLCAST_URL to the server's http://HOST:PORT/");
const TEST = { timeout: 30000 };
setTimeout(() => {
  console.error("layout test: over 80 s, giving up");
  process.exit(1);
}, 80000).unref();

let chrome;
const url = (query) => new URL("/?" + query, BASE).href;

/** Taps a header button and waits until its drawer has slid fully into the screen. */
async function openDrawer(page, which) {
  const panel = which === "rooms" ? "#sidebar" : "#memberbar";
  await page.tap(`#${which}-toggle`);
  await page.locator(panel).waitFor({ state: "visible" });
  await page.waitForFunction((sel) => {
    const r = document.querySelector(sel).getBoundingClientRect();
    return r.left >= 0 && r.right <= document.documentElement.clientWidth;
  }, panel);
}

before(async () => { chrome = await launch(); });
after(async () => { await chrome?.close(); });

test("phone: chat with a desktop user, member list one tap away, a DM started from it", TEST, async () => {
  const desk = await chrome.open(url("name=dana&room=phones"), { device: DESKTOP });
  const phone = await chrome.open(url("name=pete&room=phones"), { device: PHONE });
  for (const page of [desk, phone]) await page.locator('#status[data-state="open"]').waitFor();
  await phone.locator("#view-title", { hasText: "#phones" }).waitFor();

  // The side columns are drawers on the phone: closed, out of the way and out of reach.
  assert.equal(await phone.isVisible("#members-toggle"), true);
  assert.equal(await phone.isVisible("#rooms-toggle"), true);
  assert.equal(await phone.isVisible("#memberbar"), false);
  assert.equal(await phone.isVisible("#sidebar"), false);
  assert.equal(await desk.isVisible("#members-toggle"), false, "no drawer toggles on the desktop");
  await assertControlsReachable(phone, "the phone page");

  await say(phone, "hi from the phone");
  await message(desk, "message", "hi from the phone").waitFor();
  await say(desk, "hello phone, dana here");
  await message(phone, "message", "hello phone, dana here").waitFor();
  await desk.locator('#members li[data-member="pete"]').waitFor();
  await screenshot(phone, "phone-chat.png");

  // Members: one tap on the header button opens the list; a tap on dana starts a DM.
  await openDrawer(phone, "members");
  assert.equal(await phone.getAttribute("#members-toggle", "aria-expanded"), "true");
  await phone.locator('#members li[data-member="dana"]').waitFor();
  await assertControlsReachable(phone, "the phone's member drawer");
  await screenshot(phone, "phone-members.png");
  await phone.tap('#members li[data-member="dana"]');
  await phone.locator("#memberbar").waitFor({ state: "hidden" });
  await phone.locator("#view-title", { hasText: "@dana" }).waitFor();
  await say(phone, "a dm from the phone");
  await desk.locator('#dm-list li[data-peer="pete"] .badge').waitFor();
  await desk.click('#dm-list li[data-peer="pete"]');
  await message(desk, "dm", "a dm from the phone").waitFor();
  await say(desk, "got your dm");
  await message(phone, "dm", "got your dm").waitFor();
  await screenshot(phone, "phone-dm.png");

  // Rooms: the other drawer holds the room lists, the join box and the rename form.
  await openDrawer(phone, "rooms");
  await phone.locator('#sidebar #name-form #name').waitFor({ state: "visible" });
  await phone.locator('#dm-list li[data-peer="dana"]').waitFor();
  await assertControlsReachable(phone, "the phone's rooms drawer");
  await screenshot(phone, "phone-rooms.png");
  await phone.fill("#room-input", "phones-2");
  await phone.press("#room-input", "Enter");
  await phone.locator("#sidebar").waitFor({ state: "hidden" });
  await phone.locator("#view-title", { hasText: "#phones-2" }).waitFor();
  await openDrawer(phone, "rooms");
  await phone.tap('#joined li[data-room="phones"]');
  await phone.locator("#sidebar").waitFor({ state: "hidden" });
  await phone.locator("#view-title", { hasText: "#phones" }).waitFor();
  // Escape closes a drawer too, and gives the focus back to its button.
  await openDrawer(phone, "members");
  await phone.keyboard.press("Escape");
  await phone.locator("#memberbar").waitFor({ state: "hidden" });
  assert.equal(await phone.evaluate(() => document.activeElement.id), "members-toggle");

  // An on-screen keyboard takes the lower part of the screen: the box stays in sight above it.
  await phone.tap("#message-input");
  await phone.setViewportSize({ width: 390, height: 470 });
  await phone.waitForFunction(() => document.querySelector("#message-input").getBoundingClientRect().bottom <= 470);
  await message(phone, "message", "hello phone, dana here").waitFor();
  await assertControlsReachable(phone, "the phone page with a keyboard up");
  await desk.click('#joined li[data-room="phones"]');
  await say(phone, "typed above the keyboard");
  await message(desk, "message", "typed above the keyboard").waitFor();
  await screenshot(phone, "phone-keyboard.png");
  assert.deepEqual(chrome.errors, [], "no script errors");
  await desk.context().close();
  await phone.context().close();
});

for (const scheme of ["light", "dark"]) {
  test(`axe: no serious or critical violations at 390×844 and 1200×800, ${scheme} scheme`, TEST, async () => {
    const suffix = scheme === "dark" ? "-dark" : "";
    // Someone to talk to, so the lists and the log have content (a DM, a notice, an error).
    const other = await chrome.open(url(`name=ola-${scheme}&room=phones`), { colorScheme: scheme });
    await other.locator('#status[data-state="open"]').waitFor();
    for (const [size, device] of [["phone", PHONE], ["desktop", DESKTOP]]) {
      const me = `${size}-${scheme}`;
      const page = await chrome.open(url(`name=${me}&room=phones`), { device, colorScheme: scheme });
      await page.locator('#status[data-state="open"]').waitFor();
      await say(other, `hello ${me}`);
      await message(page, "message", `hello ${me}`).waitFor();
      await say(other, `/msg ${me} a word in private`);
      await page.locator(`#dm-list li[data-peer="ola-${scheme}"]`).waitFor({ state: "attached" });
      await say(page, "/msg nobody-here are you there?");
      await message(page, "error", "no_such_user").waitFor({ state: "attached" }).catch(() => {});
      await page.evaluate(() => document.activeElement?.blur());
      await assertAccessible(page, `the ${size} chat (${scheme})`);
      await screenshot(page, `${size}-chat${suffix}.png`);
      if (size === "phone") {
        await assertControlsReachable(page, `the phone chat (${scheme})`);
        for (const drawer of ["members", "rooms"]) {
          await openDrawer(page, drawer);
          await assertAccessible(page, `the phone's ${drawer} drawer (${scheme})`);
          await screenshot(page, `phone-${drawer}${suffix}.png`);
          await page.keyboard.press("Escape");
        }
      } else {
        // A keyboard user sees where the focus is.
        await page.focus('#joined li[data-room="phones"] .item');
        const outline = await page.$eval('#joined li[data-room="phones"] .item', (b) => getComputedStyle(b).outlineStyle);
        assert.notEqual(outline, "none", "focus is visible");
      }
      await page.context().close();
    }
    await other.context().close();

    // The name dialog a first visit shows.
    const fresh = await chrome.open(BASE, { device: PHONE, colorScheme: scheme });
    await fresh.locator("#login").waitFor({ state: "visible" });
    await assertAccessible(fresh, `the name dialog (${scheme})`);
    await screenshot(fresh, `phone-login${suffix}.png`);
    await fresh.context().close();
    assert.deepEqual(chrome.errors, [], "no script errors");
  });
}
