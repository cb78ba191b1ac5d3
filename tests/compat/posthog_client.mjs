// Drives posthog-node unchanged against a Tally server (tests/integration/test_peer_posthog.py).
// Usage: node posthog_client.mjs HOST PROJECT_TOKEN SCENARIO_JSON
// SCENARIO_JSON: {"calls": [["capture", {...}], ["identify", {...}], ...], "options": {...}}
// Prints one JSON line: {"requests": [{url, status}], "errors": [messages]}.
import { PostHog } from 'posthog-node';

const [host, token, scenarioText] = process.argv.slice(2);
const scenario = JSON.parse(scenarioText);
const requests = [];
const errors = [];
const fetchSpy = async (url, options) => {
  const res = await fetch(url, options);
  requests.push({ url: String(url), status: res.status,
                  encoding: options?.headers?.['Content-Encoding'] ?? null });
  return res;
};
const client = new PostHog(token, {
  host,
  flushAt: 20,
  flushInterval: 0,
  fetchRetryCount: 0,
  fetch: fetchSpy,
  ...(scenario.options ?? {}),
});
client.on('error', (e) => { errors.push(String(e?.message ?? e)); });
for (const [method, args] of scenario.calls) {
  if (args.timestamp) args.timestamp = new Date(args.timestamp);
  client[method](args);
}
await client.flush();
await client.shutdown(10000);
console.log(JSON.stringify({ requests, errors }));
