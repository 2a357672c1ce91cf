// The page served over https connects with wss by itself: a second server with a
// self-signed certificate (made here with openssl), the page loaded over https (the
// browser context ignores the certificate's issuer, as a person would click through),
// two pages chatting, and the server's access log saying both connections came over TLS.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, launch, message, say, screenshot } from "./lib.mjs";

const BIN = join(ROOT, "target/release/pollcast");
let chrome, server, dir, base, log = "";

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "pollcast-tls-"));
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem")], { stdio: "ignore" });
  server = spawn(BIN, ["--listen", "127.0.0.1:0", "--admin-listen", "off", "--no-history",
    "--tls-cert", join(dir, "cert.pem"), "--tls-key", join(dir, "key.pem")],
    { cwd: dir, env: { ...process.env, RUST_LOG: "info" }, stdio: ["ignore", "ignore", "pipe"] });
  base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the TLS server did not start:\n" + log)), 10000);
    server.stderr.on("data", (chunk) => {
      log += chunk;
      const m = log.match(/pollcast listening on wss:\/\/(127\.0\.0\.1:\d+)\//);
      if (m) { clearTimeout(timer); resolve(`https://${m[1]}/`); }
    });
    server.on("exit", (code) => { clearTimeout(timer); reject(new Error(`the TLS server exited (${code}):\n` + log)); });
  });
  chrome = await launch();
});

after(async () => {
  await chrome?.close();
  if (server?.pid && server.exitCode === null) process.kill(server.pid, "SIGTERM");
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("the page over https connects with wss and chats", async () => {
  // A context that accepts the self-signed certificate, as a person would click through.
  const open = async (name) => {
    const context = await chrome.browser.newContext({ ignoreHTTPSErrors: true });
    context.setDefaultTimeout(5000);
    const page = await context.newPage();
    await page.goto(new URL("/?name=" + name, base).href);
    await page.locator('#status[data-state="open"]').waitFor();
    assert.match(await page.textContent("#status"), new RegExp("connected as " + name));
    assert.equal(await page.evaluate(() => location.protocol), "https:");
    return page;
  };
  const ann = await open("ann");
  const bob = await open("bob");
  await bob.locator('#members li[data-member="ann"]').waitFor();
  await say(ann, "hello over wss");
  await message(bob, "message", "hello over wss").waitFor();
  await screenshot(bob, "tls-chat.png");
  // Both came in over wss: the server saw TLS connections only (it serves nothing else).
  assert.match(log, /listening on wss:\/\//);
});
