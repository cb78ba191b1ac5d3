// A real WebSocket client (the `ws` package, pinned in package.json) for GET /api/v1/live:
//   node live_client.mjs URL WANT_EVENTS TIMEOUT_MS [--ping]
// Prints "open", then one line per message received (the raw JSON), then "events N" and
// "close CODE" when the server closes, or "timeout" once WANT_EVENTS events arrived or the
// time ran out. With --ping it pings once after opening and prints "pong PAYLOAD".
import WebSocket from 'ws';

const [url, wantArg, timeoutArg, flag] = process.argv.slice(2);
const want = Number(wantArg || 1);
const ws = new WebSocket(url);
let events = 0;
const done = (why) => {
  console.log(`events ${events}`);
  console.log(why);
  ws.terminate();
  process.exit(0);
};
const timer = setTimeout(() => done('timeout'), Number(timeoutArg || 5000));
ws.on('unexpected-response', (req, res) => {
  let body = '';
  res.on('data', (d) => { body += d; });
  res.on('end', () => { console.log(`http ${res.statusCode} ${body}`); process.exit(0); });
});
ws.on('open', () => {
  console.log('open');
  if (flag === '--ping') ws.ping('hello');
});
ws.on('pong', (data) => console.log(`pong ${data.toString()}`));
ws.on('message', (data, isBinary) => {
  const text = data.toString();
  console.log(text);
  if (JSON.parse(text).type === 'event' && ++events >= want) {
    clearTimeout(timer);
    done('enough');
  }
});
ws.on('close', (code) => { clearTimeout(timer); done(`close ${code}`); });
ws.on('error', (e) => console.log(`error ${e.message}`));
