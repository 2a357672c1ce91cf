// End-to-end test of the built-in chat page in headless Chromium.
//
// Two browser contexts (so two separate localStorage) open the page served by a running
// pollcast as "bob" and "alice", both in room `lobby`: they chat, alice sends bob a
// direct message, bob sees alice arrive, names with markup stay text, joining and
// leaving a room works, a dropped socket reconnects, and a reload replays history.
// Screenshots go to test-artifacts/.
//
// usage: POLLCAST_URL=http://127.0.0.1:PORT/ node --test chat.test.mjs
//        (scripts/browser-test.sh builds and starts the server and sets this)
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const BASE = process.env.POLLCAST_URL;
if (!BASE) throw new Error("set POLLCAST_URL to the server's http://HOST:PORT/");
const HERE = dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = process.env.ARTIFACTS_DIR || resolve(HERE, "../../test-artifacts");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WAIT = 5000; // every single wait
const TEST = { timeout: 15000 }; // every test

// The whole file is bounded too, whatever hangs.
setTimeout(() => {
  console.error("browser test: over 55 s, giving up");
  process.exit(1);
}, 55000).unref();

let browser, alice, bob, profile;
const consoleErrors = [];

/** A page in a fresh context, its console errors collected. */
async function openPage(url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  await page.goto(url, { timeout: WAIT });
  return page;
}

const message = (page, kind, text) => page.locator(`#messages li[data-kind="${kind}"]`, { hasText: text });

async function say(page, text) {
  await page.fill("#message-input", text);
  await page.press("#message-input", "Enter");
}

before(async () => {
  // Playwright refuses --user-data-dir in args (it makes a fresh profile per launch);
  // a fresh one is also passed through the environment Chromium reads for its temp files.
  profile = mkdtempSync(join(tmpdir(), "pollcast-chromium-"));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 20000,
    env: { ...process.env, TMPDIR: profile, HOME: profile },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test("two users meet in lobby and see each other's presence", TEST, async () => {
  bob = await openPage(new URL("/?name=bob", BASE).href);
  await bob.locator('#status[data-state="open"]').waitFor();
  assert.match(await bob.textContent("#status"), /connected as bob/);
  await bob.locator('#joined li[data-room="lobby"].current').waitFor();

  // alice has no name yet: the page asks for one.
  alice = await openPage(BASE);
  await alice.locator("#login").waitFor({ state: "visible" });
  await alice.fill("#login-name", "alice");
  await alice.click("#login-button");
  await alice.locator('#status[data-state="open"]').waitFor();
  assert.match(await alice.textContent("#status"), /connected as alice/);
  assert.equal(await alice.evaluate(() => localStorage.getItem("pollcast.name")), '"alice"');

  // Each sees the other in the member list; bob got alice's presence as a notice.
  await alice.locator('#members li[data-member="bob"]').waitFor();
  await bob.locator('#members li[data-member="alice"]').waitFor();
  await message(bob, "notice", "alice joined #lobby").waitFor();
  // The room list counts both.
  await alice.locator('#room-list li[data-room="lobby"][data-count="2"]').waitFor();
});

test("room messages both ways, user text never becomes markup", TEST, async () => {
  await say(alice, "hello from alice");
  const got = message(bob, "message", "hello from alice");
  await got.waitFor();
  assert.equal(await got.getAttribute("data-from"), "alice");
  assert.equal(await got.locator(".from").textContent(), "alice");
  assert.match(await got.locator(".time").textContent(), /^\d\d:\d\d$/);
  await message(alice, "message", "hello from alice").waitFor(); // the sender's own copy
  assert.equal(await alice.inputValue("#message-input"), "", "Enter sent and cleared the box");

  await say(bob, "hi alice, bob here");
  await message(alice, "message", "hi alice, bob here").waitFor();

  const markup = '<img src=x onerror="window.pwned=1"><b>bold?</b>';
  await say(bob, markup);
  const raw = message(alice, "message", "bold?");
  await raw.waitFor();
  assert.equal(await raw.locator(".text").textContent(), markup);
  assert.equal(await alice.locator("#messages img, #messages b").count(), 0);
  assert.equal(await alice.evaluate(() => window.pwned), undefined);
});

test("direct messages: by clicking a member and by /msg", TEST, async () => {
  await alice.click('#members li[data-member="bob"]');
  await alice.locator("#view-title", { hasText: "@bob" }).waitFor();
  await say(alice, "psst bob, just you");

  // bob is still in lobby: a DM tab with an unread badge appears; the message is marked DM.
  const tab = bob.locator('#dm-list li[data-peer="alice"]');
  await tab.locator(".badge").waitFor();
  await tab.click();
  const dm = message(bob, "dm", "psst bob, just you");
  await dm.waitFor();
  assert.equal(await dm.locator(".tag").textContent(), "DM");
  assert.equal(await dm.getAttribute("data-from"), "alice");
  assert.equal(await dm.getAttribute("data-to"), "bob");
  await message(alice, "dm", "psst bob, just you").waitFor(); // sender's copy
  // It did not land in the room.
  await bob.click('#joined li[data-room="lobby"]');
  assert.equal(await message(bob, "message", "psst bob").count(), 0);

  // The /msg command from a room view.
  await say(bob, "/msg alice got it, thanks");
  await message(alice, "dm", "got it, thanks").waitFor(); // alice has the @bob view open
  await bob.locator('#dm-list li[data-peer="alice"]').waitFor();

  await alice.click('#joined li[data-room="lobby"]');
  mkdirSync(ARTIFACTS, { recursive: true });
  await bob.screenshot({ path: join(ARTIFACTS, "browser-chat.png") });
  await bob.click('#dm-list li[data-peer="alice"]');
  await message(bob, "dm", "got it, thanks").waitFor();
  await bob.screenshot({ path: join(ARTIFACTS, "browser-chat-dm.png") });

  // A DM to someone who is not there is an error in the pane, not a disconnect.
  await say(bob, "/msg nobody-here hello?");
  await bob.locator('#dm-list li[data-peer="nobody-here"]').click();
  await message(bob, "error", "no_such_user").waitFor();
  assert.equal(await bob.getAttribute("#status", "data-state"), "open");
  await bob.click('#joined li[data-room="lobby"]');
});

test("join and leave a second room; leave notice reaches the others", TEST, async () => {
  await alice.fill("#room-input", "games");
  await alice.click("#join-button");
  await alice.locator('#joined li[data-room="games"].current').waitFor();
  await alice.locator('#members li[data-member="alice"]').waitFor();

  await bob.fill("#room-input", "games");
  await bob.press("#room-input", "Enter");
  await bob.locator('#joined li[data-room="games"].current').waitFor();
  await message(alice, "notice", "bob joined #games").waitFor();
  await say(alice, "anyone for chess?");
  await message(bob, "message", "anyone for chess?").waitFor();
  assert.equal(await message(bob, "message", "anyone for chess?").getAttribute("data-room"), "games");

  await bob.click('#joined [data-leave="games"]');
  await bob.locator('#joined li[data-room="games"]').waitFor({ state: "detached" });
  await message(alice, "notice", "bob left #games").waitFor();
  await alice.locator('#members li[data-member="bob"]').waitFor({ state: "detached" });
});

test("a dropped connection reconnects with backoff and rejoins its rooms", TEST, async () => {
  await alice.click('#joined li[data-room="lobby"]');
  await alice.evaluate(() => window.pollcast.dropConnection());
  await alice.locator('#status[data-state="closed"]').waitFor();
  await say(bob, "said while alice was away"); // recovered by join `since` (or live if she is quick)
  await alice.locator('#status[data-state="open"]').waitFor();
  await alice.locator('#joined li[data-room="games"]').waitFor();
  assert.deepEqual((await alice.evaluate(() => window.pollcast.rooms)).sort(), ["games", "lobby"]);
  // Still alice (or back to alice after the nick retry), and still in both rooms.
  await alice.locator("#status", { hasText: "connected as alice" }).waitFor();
  await message(alice, "message", "said while alice was away").waitFor({ state: "attached" });
  await say(bob, "welcome back");
  await message(alice, "message", "welcome back").waitFor();
  await say(alice, "thanks, still here");
  await message(bob, "message", "thanks, still here").waitFor();
});

test("history: a reload replays the room without duplicates, older pages on demand", TEST, async () => {
  // The server replays HISTORY_DEFAULT messages on join (browser-test.sh starts it with
  // POLLCAST_HISTORY_DEFAULT=10); the lobby holds more than that by now.
  const replayed = Number(process.env.HISTORY_DEFAULT || 10);
  for (let i = 1; i <= replayed; i++) await say(alice, `burst ${i}`);
  const text = (page, t) => page.locator('#messages li[data-kind="message"] .text', { hasText: new RegExp(`^${t}$`) });
  await text(bob, `burst ${replayed}`).waitFor();

  await bob.reload({ timeout: WAIT });
  await bob.locator('#status[data-state="open"]').waitFor();
  await text(bob, `burst ${replayed}`).waitFor();
  assert.equal(await text(bob, "burst 1").count(), 1);
  assert.equal(await text(bob, "hello from alice").count(), 0, "only the last page is replayed");
  await bob.click("#older-button");
  await text(bob, "hello from alice").waitFor();
  assert.equal(await text(bob, "burst 1").count(), 1, "no duplicates after paging");
  const ids = await bob.$$eval('#messages li[data-kind="message"]', (lis) => lis.map((li) => Number(li.dataset.id)));
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), "oldest first");
  assert.equal(new Set(ids).size, ids.length);
  assert.deepEqual(consoleErrors, [], "no script errors in either page");
});
