// Drives headless Chromium (Debian's /usr/bin/chromium through playwright-core; no browser
// download) for tests/integration/test_dashboard.py. One JSON object on stdout per run.
//
//   node dashboard_e2e.mjs track      SITE_URL            visits the test site: navigations, SPA
//                                                         routes, clicks; reports what was sent
//   node dashboard_e2e.mjs dashboard  TALLY_URL KEY SITE  opens the dashboard, enters the key,
//                                                         reads the numbers, filters by clicking
//                                                         a page row, reloads; reports each step
//   node dashboard_e2e.mjs screenshots TALLY_URL KEY SITE DIR   light and dark PNGs into DIR
import { chromium } from 'playwright-core';

const [mode, ...args] = process.argv.slice(2);
const TIMEOUT_MS = 15000;
const VISITOR_UA = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) ' +
  'Chrome/131.0.0.0 Safari/537.36';

async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
}

// The events the tracker sends, seen from the page's side (request bodies to /v1/events).
function recordBeacons(page, sent) {
  page.on('request', (r) => {
    if (r.url().includes('/v1/events') && r.method() === 'POST') {
      try { sent.push(JSON.parse(r.postData())); } catch { sent.push({raw: r.postData()}); }
    }
  });
}

async function waitSent(sent, n, what) {
  const t0 = Date.now();
  while (sent.length < n) {
    if (Date.now() - t0 > TIMEOUT_MS) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(sent)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function track(siteUrl) {
  const browser = await launch();
  // Headless Chromium names itself HeadlessChrome, which Tally rightly counts as a bot: the
  // visitor here stands for a person, so it wears a desktop Chrome's User-Agent.
  const ctx = await browser.newContext({userAgent: VISITOR_UA, acceptDownloads: false});
  const page = await ctx.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const sent = [];
  recordBeacons(page, sent);
  // The outbound link leaves the test site: answer it locally.
  await ctx.route('http://outbound.example/**', (r) => r.fulfill({status: 200, contentType: 'text/html', body: '<p>partner</p>'}));
  const steps = [];
  const step = async (name, n, fn) => { await fn(); await waitSent(sent, n, name); steps.push(name); };

  await step('load /', 2, () => page.goto(siteUrl + '/'));                 // queued event + pageview
  await step('spa /about', 3, () => page.click('#spa-about'));
  await step('spa /pricing', 4, () => page.click('#spa-pricing'));
  await step('back to /about', 5, () => page.goBack());
  await step('signup button', 6, () => page.click('#signup'));
  await step('purchase', 7, async () => {
    await page.click('#buy');
    await page.waitForSelector('body[data-sent="1"]');
  });
  await step('load /docs.html', 9, () => page.goto(siteUrl + '/docs.html?utm_source=newsletter'));
  // An excluded path: the page loads the tracker but sends nothing.
  await page.goto(siteUrl + '/private/secret.html');
  await page.waitForFunction(() => typeof window.tally === 'function' && !window.tally.q);
  await page.goto(siteUrl + '/docs.html');
  await waitSent(sent, 11, 'second docs pageview');
  await step('file download', 12, () => page.click('#file'));
  await step('outbound click', 13, async () => {
    await page.click('#out');
    await page.waitForURL('http://outbound.example/**');
  });
  const cookies = await ctx.cookies();
  await browser.close();
  return {steps, sent, cookies: cookies.length};
}

// The dashboard's state as the user sees it.
async function readDashboard(page) {
  await page.waitForSelector('body[data-loading="false"]');
  return page.evaluate(() => {
    const top = {};
    document.querySelectorAll('#top .stat').forEach((b) => {
      top[b.dataset.metric] = {value: b.querySelector('.stat-value').dataset.value,
        text: b.querySelector('.stat-value').textContent};
    });
    const rows = {};
    document.querySelectorAll('.panel').forEach((p) => {
      rows[p.id] = [...p.querySelectorAll('.row')].map((r) => [r.dataset.value, r.querySelector('.row-num[data-value]').dataset.value]);
    });
    return {hash: location.hash, top, rows,
      chips: [...document.querySelectorAll('#chips .chip')].map((c) => c.textContent),
      live: document.getElementById('live-count').dataset.value,
      chartSvgOrCanvas: !!document.querySelector('#chart canvas'),
      error: document.getElementById('error').hidden ? '' : document.getElementById('error').textContent,
      keyInUrl: location.href.includes(localStorage.getItem('tally.key'))};
  });
}

async function openDashboard(page, tallyUrl, key, site, hash) {
  await page.goto(`${tallyUrl}/#${hash || `site=${site}&period=day`}`);
  await page.waitForSelector('#key-dialog[open]');
  await page.fill('#key-input', key);
  await page.press('#key-input', 'Enter');
  await page.waitForSelector('#top .stat');
}

async function dashboard(tallyUrl, key, site) {
  const browser = await launch();
  const page = await browser.newPage({viewport: {width: 1280, height: 900}});
  page.setDefaultTimeout(TIMEOUT_MS);
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  await openDashboard(page, tallyUrl, key, site);
  await page.waitForFunction(() => document.getElementById('live-count').dataset.value !== '');
  const initial = await readDashboard(page);

  // Filter by clicking the /about row of the pages panel (keyboard: focus + Enter).
  const row = page.locator('#panel-pages .row[data-value="/about"]');
  await row.focus();
  await page.keyboard.press('Enter');
  await page.waitForSelector('#chips .chip');
  const filtered = await readDashboard(page);

  // Switch a tab, then reload: the URL alone must restore the view.
  await page.click('#panel-devices [role=tab][data-dim="visit:browser"]');
  await page.waitForFunction(() => location.hash.includes('tab_devices'));
  await page.reload();
  await page.waitForSelector('#chips .chip');
  const reloaded = await readDashboard(page);
  const browserTab = await page.getAttribute('#panel-devices [data-dim="visit:browser"]', 'aria-selected');

  // Removing the chip returns to the unfiltered numbers.
  await page.click('#chips .chip-x');
  await page.waitForFunction(() => !document.querySelector('#chips .chip'));
  const unfiltered = await readDashboard(page);
  await browser.close();
  return {initial, filtered, reloaded, browserTab, unfiltered, consoleErrors};
}

async function screenshots(tallyUrl, key, site, dir) {
  const browser = await launch();
  const out = [];
  for (const [scheme, vp, name] of [['light', {width: 1280, height: 900}, 'dashboard-light.png'],
    ['dark', {width: 1280, height: 900}, 'dashboard-dark.png'],
    ['dark', {width: 390, height: 844}, 'dashboard-phone-dark.png']]) {
    const page = await browser.newPage({viewport: vp, colorScheme: scheme, deviceScaleFactor: 1});
    page.setDefaultTimeout(TIMEOUT_MS);
    await openDashboard(page, tallyUrl, key, site, `site=${site}&period=30d&compare=1&prop=plan`);
    await readDashboard(page);
    await page.waitForFunction(() => document.getElementById('live-count').dataset.value !== '');
    await page.waitForTimeout(300);
    await page.screenshot({path: `${dir}/${name}`, fullPage: true});
    out.push(name);
    await page.close();
  }
  await browser.close();
  return {screenshots: out};
}

const run = {track: () => track(args[0]), dashboard: () => dashboard(...args.slice(0, 3)),
  screenshots: () => screenshots(...args.slice(0, 4))}[mode];
if (!run) {
  console.error('usage: dashboard_e2e.mjs track|dashboard|screenshots ...');
  process.exit(2);
}
run().then((r) => { console.log(JSON.stringify(r)); }, (e) => { console.error(e.stack || String(e)); process.exit(1); });
