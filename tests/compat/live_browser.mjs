// Headless Chromium (Debian's /usr/bin/chromium through playwright-core) speaks to
// GET /api/v1/live with the browser's own WebSocket, as the dashboard does (?key=, since
// browsers cannot set headers on a WebSocket):
//   node live_browser.mjs WS_URL WANT_EVENTS TIMEOUT_MS
// Prints "open" once the socket is open (the caller then posts events), then one JSON object
// {"messages": [...], "close": CODE|null} when WANT_EVENTS events arrived or the time ran out.
import { chromium } from 'playwright-core';

const [url, wantArg, timeoutArg] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage();
  await page.exposeFunction('reportOpen', () => console.log('open'));
  const result = await page.evaluate(([u, want, timeout]) => new Promise((resolve) => {
    const messages = [];
    let events = 0;
    const ws = new WebSocket(u);
    const finish = (close) => resolve({ messages, close });
    const timer = setTimeout(() => { ws.close(); finish(null); }, timeout);
    ws.onopen = () => window.reportOpen();
    ws.onmessage = (m) => {
      messages.push(JSON.parse(m.data));
      if (JSON.parse(m.data).type === 'event' && ++events >= want) {
        clearTimeout(timer);
        ws.close(1000);
        finish(null);
      }
    };
    ws.onclose = (e) => { clearTimeout(timer); finish(e.code); };
  }), [url, Number(wantArg || 1), Number(timeoutArg || 5000)]);
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
