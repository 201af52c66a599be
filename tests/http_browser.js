// The web page of goldfinchd --http in headless Chromium, driven by puppeteer-core
// (tests/http_test.py, case browser, runs it). It types the token, uploads the folder
// GF_FOLDER through the page's folder input as context GF_NAME, waits for the progress bar
// to finish, asks GF_QUESTION greedily, then uploads the text file GF_BOOK as context
// "book", and prints what the page shows as one line of JSON.
// Environment: GF_URL, GF_TOKEN, GF_FOLDER, GF_NAME, GF_MODEL (the folder's model id),
// GF_QUESTION, GF_MAX_TOKENS, GF_BOOK, CHROMIUM,
// GF_SCREENSHOT (a PNG of the page at the end, for a person to look at).
"use strict";
const puppeteer = require("puppeteer-core");

async function main() {
  const env = process.env;
  const browser = await puppeteer.launch({
    executablePath: env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // Root (CI) cannot use Chromium's sandbox; the page is our own, on loopback.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage();
    const problems = [];
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
    await page.goto(env.GF_URL + "/", { waitUntil: "load" });
    // The token first: the model list loads again when it changes.
    await page.type("#token", env.GF_TOKEN || "");
    await page.$eval("#token", (el) => el.dispatchEvent(new Event("change")));
    await page.waitForFunction(() => document.querySelector("#model").options.length > 0, { timeout: 20000 });
    // Before the token the page's first model list was refused (401), as it should be.
    const early = problems.splice(0).filter((p) => !/status of 401/.test(p));
    problems.push(...early);
    await page.type("#ctx-name", env.GF_NAME);
    const input = await page.$("#folder");
    await input.uploadFile(env.GF_FOLDER);
    const picked = await page.$eval("#folder", (el) => [...el.files].map((f) => f.webkitRelativePath));
    await page.click("#upload");
    await page.waitForSelector("#ingest-progress:is([data-state=done], [data-state=failed])", { timeout: 60000 });
    const ingest = await page.evaluate(() => ({
      state: document.querySelector("#ingest-progress").dataset.state,
      value: document.querySelector("#ingest-progress").value,
      status: document.querySelector("#ingest-status").textContent,
      error: document.querySelector("#error").textContent,
    }));
    if (ingest.state !== "done") throw new Error("ingest: " + JSON.stringify(ingest));
    // The page selects the new context once the list has it.
    const want = env.GF_MODEL;
    await page.waitForFunction((m) => document.querySelector("#model").value === m, { timeout: 20000 }, want);
    await page.type("#question", env.GF_QUESTION);
    await page.$eval("#max-tokens", (el, v) => { el.value = v; }, env.GF_MAX_TOKENS);
    await page.$eval("#temperature", (el) => { el.value = "0"; });
    await page.click("#ask");
    await page.waitForSelector("#answer:is([data-state=done], [data-state=failed])", { timeout: 60000 });
    const result = await page.evaluate(() => ({
      state: document.querySelector("#answer").dataset.state,
      answer: document.querySelector("#answer").textContent,
      cached: document.querySelector("#st-cached").textContent,
      prompt: document.querySelector("#st-prompt").textContent,
      finish: document.querySelector("#st-finish").textContent,
      progress: document.querySelector("#prompt-progress").value,
      error: document.querySelector("#error").textContent,
      models: [...document.querySelector("#model").options].map((o) => o.value),
    }));
    // A book: the text file as it is, through the other input.
    let book = null;
    if (env.GF_BOOK) {
      await page.$eval("#ctx-name", (el) => { el.value = ""; });
      await page.type("#ctx-name", "book");
      await (await page.$("#book")).uploadFile(env.GF_BOOK);
      await page.click("#upload");
      await page.waitForFunction(() => /^Ready: book|failed/.test(document.querySelector("#ingest-status").textContent) ||
                                 document.querySelector("#ingest-progress").dataset.state === "failed", { timeout: 60000 });
      await page.waitForFunction((m) => document.querySelector("#model").value === m, { timeout: 20000 },
                                 env.GF_MODEL.split("@")[0] + "@book");
      book = await page.evaluate(() => ({
        state: document.querySelector("#ingest-progress").dataset.state,
        status: document.querySelector("#ingest-status").textContent,
        folder: document.querySelector("#folder").files.length,
      }));
    }
    if (env.GF_SCREENSHOT) await page.screenshot({ path: env.GF_SCREENSHOT, fullPage: true });
    process.stdout.write(JSON.stringify({ ingest, picked, problems, book, ...result }) + "\n");
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e && e.stack ? e.stack : String(e)); process.exit(1); });
