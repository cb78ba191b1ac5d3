// Drives the official @umami/node client, unchanged, against a Tally server.
// Usage: node umami_client.mjs HOST_URL WEBSITE_ID
// Sends a pageview, a custom event with data, an identify and a pageview with a full payload,
// then prints one JSON line per call: {"status": N, "body": parsed answer}.
import { Umami } from '@umami/node';

const [hostUrl, websiteId] = process.argv.slice(2);
const umami = new Umami();
umami.init({ websiteId, hostUrl });

async function show(promise) {
  const res = await promise;
  const text = await res.text();
  let body = text;
  try { body = JSON.parse(text); } catch { /* keep the text */ }
  console.log(JSON.stringify({ status: res.status, body }));
}

await show(umami.track({ url: '/home', hostname: 'example.com', title: 'Home',
                         referrer: 'https://news.ycombinator.com/', language: 'en-US',
                         screen: '1440x900' }));
await show(umami.track('signup', { plan: 'pro', seats: 3, trial: false,
                                   meta: { source: 'ad', ids: [1, 2] } }));
await show(umami.identify({ email_domain: 'example.com' }));
await show(umami.track({ url: 'https://example.com/pricing?utm_source=mail', name: undefined,
                         id: 'user-77' }));
