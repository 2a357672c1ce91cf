// Shared by the browser tests that came after chat.test.mjs: launching Debian's chromium,
// pages at phone and desktop size in either colour scheme, axe-core, small chat helpers.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

export const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, "../..");
export const ARTIFACTS = process.env.ARTIFACTS_DIR || join(ROOT, "test-artifacts");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const WAIT = 5000; // every single wait

/** The two sizes the page is checked at: an iPhone 12-14 sized phone and a laptop. */
export const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };
export const DESKTOP = { viewport: { width: 1200, height: 800 } };

const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js");

/** Headless chromium with a throwaway profile; `close()` stops it and removes the profile. */
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), "pollcast-chromium-"));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 20000,
    env: { ...process.env, TMPDIR: profile, HOME: profile },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const errors = [];
  return {
    browser,
    errors,
    /** A page in a fresh context (its own localStorage); its script errors land in `errors`. */
    async open(url, { device = DESKTOP, colorScheme = "light", init } = {}) {
      const context = await browser.newContext({ ...device, colorScheme });
      context.setDefaultTimeout(WAIT);
      const page = await context.newPage();
      page.on("pageerror", (e) => errors.push(String(e)));
      page.on("console", (m) => m.type() === "error" && !/WebSocket connection/.test(m.text()) && errors.push(m.text()));
      if (init) await page.addInitScript(init);
      if (url) await page.goto(url, { timeout: WAIT });
      return page;
    },
    async close() {
      await browser.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

export const message = (page, kind, text) => page.locator(`#messages li[data-kind="${kind}"]`, { hasText: text });

export async function say(page, text) {
  await page.fill("#message-input", text);
  await page.press("#message-input", "Enter");
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, name) });
}

/**
 * Runs axe-core in the page as it is now and fails on any serious or critical violation,
 * listing each with the elements it found. Returns every violation (any impact) for the log.
 */
export async function assertAccessible(page, what) {
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ["violations"] });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ") + ": " + n.failureSummary.replace(/\s+/g, " ")) }));
  });
  const bad = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(bad, [], `axe: serious or critical violations in ${what}`);
  for (const v of violations) console.log(`axe (${what}): ${v.impact} ${v.id}: ${v.help} [${v.nodes.length}]`);
  return violations;
}

/**
 * Every visible control (buttons, inputs) lies inside the viewport's width, the page does not
 * scroll sideways, and the control is the topmost thing at its own centre (nothing covers it).
 */
export async function assertControlsReachable(page, what) {
  const problems = await page.evaluate(() => {
    const out = [];
    const width = document.documentElement.clientWidth;
    if (document.documentElement.scrollWidth > width) out.push(`page is ${document.documentElement.scrollWidth}px wide in a ${width}px viewport`);
    for (const node of document.querySelectorAll("button, input, [tabindex]")) {
      const r = node.getBoundingClientRect();
      const style = getComputedStyle(node);
      if (!r.width || !r.height || style.visibility === "hidden" || node.closest("[inert], [hidden]")) continue;
      if (node.closest("#messages li")) continue; // scrolls with the list ("load earlier")
      const name = node.id ? "#" + node.id : node.outerHTML.slice(0, 80);
      if (r.left < -1 || r.right > width + 1) out.push(`${name} spans x=${Math.round(r.left)}..${Math.round(r.right)}`);
      const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      if (top && top !== node && !node.contains(top)) out.push(`${name} is covered by ${top.id ? "#" + top.id : top.tagName}`);
    }
    return out;
  });
  assert.deepEqual(problems, [], `controls out of reach in ${what}`);
}
