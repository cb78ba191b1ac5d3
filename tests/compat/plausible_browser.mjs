// Drives headless Chromium (Debian /usr/bin/chromium, via playwright-core) to a page that runs
// Plausible's official npm tracker pointed at Tally (tests/integration/test_peer_plausible.py).
//
// usage: node plausible_browser.mjs PAGE_URL HOST_MAP
//   PAGE_URL  the test page (on a host name that HOST_MAP resolves to 127.0.0.1, so the tracker
//             does not take it for localhost and skip it)
//   HOST_MAP  Chromium --host-resolver-rules, e.g. "MAP example.test 127.0.0.1"
// Prints one JSON line: {"results": [...statuses of track() callbacks], "statuses": [...HTTP
// statuses of the page's requests to /api/event]}.
import { chromium } from 'playwright-core'

const [pageUrl, hostMap] = process.argv.slice(2)
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', `--host-resolver-rules=${hostMap}`,
         // navigator.webdriver would make the tracker ignore every event (it skips automation)
         '--disable-blink-features=AutomationControlled'],
})
const out = { results: [], statuses: [] }
try {
  // Headless Chromium says "HeadlessChrome" in its User-Agent, which Tally (like Plausible)
  // takes for a bot: present the regular Chrome one so that the events are counted.
  const ua = (await browser.newPage().then(async (p) => {
    const v = await p.evaluate(() => navigator.userAgent); await p.close(); return v
  })).replace('HeadlessChrome', 'Chrome')
  const page = await browser.newPage({ userAgent: ua })
  page.on('response', (r) => { if (r.url().endsWith('/api/event')) out.statuses.push(r.status()) })
  page.on('console', (m) => process.stderr.write(`console: ${m.text()}\n`))
  await page.goto(pageUrl, { referer: 'https://news.ycombinator.com/' })
  await page.waitForFunction(() => window.results && window.results.length >= 1, null,
                             { timeout: 15000 })
  // the pageview's response too
  const deadline = Date.now() + 10000
  while (out.statuses.length < 2 && Date.now() < deadline) await page.waitForTimeout(50)
  out.results = await page.evaluate(() => window.results)
} finally {
  await browser.close()
}
console.log(JSON.stringify(out))
