// Drives @segment/analytics-node unchanged against a Tally server (tests/integration/
// test_peer_segment.py). Usage: node segment_client.mjs HOST WRITE_KEY SCENARIO_JSON
// SCENARIO_JSON: {"calls": [["track", {...}], ["page", {...}], ...], "flushAt": N}
// Prints one JSON line: {"responses": [{status, body}], "errors": [messages]}.
import { Analytics } from '@segment/analytics-node';

const [host, writeKey, scenarioText] = process.argv.slice(2);
const scenario = JSON.parse(scenarioText);
const analytics = new Analytics({
  writeKey,
  host,
  flushAt: scenario.flushAt ?? 15,
  flushInterval: 200,
  maxRetries: scenario.maxRetries ?? 0,
});
const responses = [];
const errors = [];
analytics.on('http_request', (r) => { responses.push({ url: r.url, body: JSON.parse(r.body) }); });
analytics.on('http_response', (r) => { responses.push({ status: r.status }); });
analytics.on('error', (e) => { errors.push(String(e.reason ?? e.message ?? e)); });
for (const [method, args] of scenario.calls) {
  if (args.timestamp) args.timestamp = new Date(args.timestamp);
  analytics[method](args);
}
await analytics.closeAndFlush({ timeout: 10000 });
console.log(JSON.stringify({ responses, errors }));
