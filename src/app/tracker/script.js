/* Tally tracker (GET /js/script.js). No cookies, no storage. Attributes of the script tag:
 data-domain|data-site, data-api, data-hash, data-exclude="/admin/**,/p/*", data-outbound,
 data-downloads[="pdf,zip"], data-404, data-respect-dnt, data-allow-localhost, data-manual.
 API: tally(name, {props, revenue, interactive, callback}); calls queued in tally.q run first. */
(function (w, d) {
  var s = d.currentScript, n = w.navigator, h = w.history, last;
  if (!s) return;
  var at = function (k) { return s.getAttribute('data-' + k); };
  var on = function (k) { return s.hasAttribute('data-' + k); };
  var site = at('domain') || at('site');
  var api = at('api') || new URL(s.src).origin + '/v1/events';
  var ex = (at('exclude') || '').split(',').filter(Boolean).map(function (p) {
    return new RegExp('^' + p.trim().replace(/[.+?^${}()|[\]\\]/g, '\\$&')
      .replace(/\*\*/g, '\0').replace(/\*/g, '[^/]*').replace(/\0/g, '.*') + '$');
  });
  var types = (at('downloads') || 'pdf,xlsx,docx,txt,rtf,csv,exe,key,pps,ppt,pptx,7z,pkg,rar,' +
    'gz,zip,avi,mov,mp4,mpeg,wmv,midi,mp3,wav,wma,dmg,apk,iso,epub,tar').split(',');

  /* The page's URL as reported; with data-hash "#/a/b" becomes the path "/a/b". */
  function href() {
    var l = w.location, p = l.pathname;
    if (on('hash') && l.hash.length > 1) p = p.replace(/\/$/, '') + '/' + l.hash.replace(/^#\/?/, '');
    return l.origin + p + l.search;
  }

  function send(name, o) {
    o = o || {};
    var cb = o.callback || function () {}, l = w.location, path = new URL(href()).pathname;
    if (!site || (/^(localhost|127(\.\d+){3}|\[::1\])$/.test(l.hostname) || l.protocol == 'file:')
        && !on('allow-localhost') || on('respect-dnt') && (n.doNotTrack == '1' || w.doNotTrack == '1')
        || ex.some(function (r) { return r.test(path); })) return cb({ignored: true});
    var e = {site: site, name: name, url: href()};
    if (d.referrer) e.referrer = d.referrer;
    if (o.props) e.props = o.props;
    if (o.revenue) e.revenue = o.revenue;
    if (o.interactive === false) e.interactive = false;
    var body = JSON.stringify(e);
    /* text/plain keeps both a "simple" CORS request: no preflight */
    if (n.sendBeacon && n.sendBeacon(api, new Blob([body], {type: 'text/plain'}))) return cb({});
    fetch(api, {method: 'POST', body: body, keepalive: true, headers: {'Content-Type': 'text/plain'}})
      .then(function (r) { cb({status: r.status}); }, function (err) { cb({error: err}); });
  }

  function page() {
    var u = href();
    if (u == last) return;
    last = u;
    send('pageview');
  }

  var queue = w.tally && w.tally.q || [];
  w.tally = function (name, o) { name == 'pageview' ? (last = href(), send(name, o)) : send(name, o); };
  queue.forEach(function (a) { w.tally.apply(0, a); });

  if (!on('manual')) {
    var wrap = function (f) {
      var orig = h[f];
      h[f] = function () { var r = orig.apply(this, arguments); page(); return r; };
    };
    wrap('pushState');
    wrap('replaceState');
    w.addEventListener('popstate', page);
    if (on('hash')) w.addEventListener('hashchange', page);
    d.visibilityState == 'prerender'
      ? d.addEventListener('visibilitychange', function v() {
        if (d.visibilityState != 'prerender') { d.removeEventListener('visibilitychange', v); page(); }
      })
      : page();
  }
  if (on('404')) send('404', {props: {path: w.location.pathname}});

  /* Clicks: data-tally-event elements (props from data-tally-prop-KEY), outbound links, files. */
  function click(ev) {
    if (ev.type == 'auxclick' && ev.button != 1) return;
    for (var el = ev.target; el && el.getAttribute; el = el.parentNode) {
      var name = el.getAttribute('data-tally-event');
      if (name) {
        var props = {}, a = el.attributes;
        for (var i = 0; i < a.length; i++)
          if (a[i].name.indexOf('data-tally-prop-') == 0) props[a[i].name.slice(16)] = a[i].value;
        send(name, {props: props});
        return;
      }
      if (el.tagName == 'A' && el.href) {
        var u = new URL(el.href, w.location.href), ext = u.pathname.split('.').pop().toLowerCase();
        if (on('downloads') && u.pathname.indexOf('.') > 0 && types.indexOf(ext) >= 0)
          send('File Download', {props: {url: u.href}});
        else if (on('outbound') && /^https?:$/.test(u.protocol) && u.host != w.location.host)
          send('Outbound Link: Click', {props: {url: u.href}});
        return;
      }
    }
  }
  d.addEventListener('click', click, true);
  d.addEventListener('auxclick', click, true);
})(window, document);
