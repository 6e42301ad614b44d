// Open the page in headless Chromium (Playwright driving the system's browser) and print window.mheResult.
//   node check.mjs URL CHROMIUM_PATH
import { chromium } from "playwright-core";

const [url, executablePath] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ], // Playwright gives every launch a fresh profile (user data dir)
});
try {
  const page = await browser.newPage();
  page.on("console", (message) => console.error(`page: ${message.text()}`));
  page.on("pageerror", (error) => console.error(`page error: ${error.message}`));
  page.on("response", (r) => { if (r.status() >= 400) console.error(`page: ${r.status()} ${r.url()}`); });
  await page.goto(url);
  await page.waitForFunction(() => window.mheResult !== undefined, null, { timeout: 180_000 });
  const result = await page.evaluate(() => window.mheResult);
  result.browser = browser.version();
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
