/*
 * Tally dashboard. Every number comes from the public Stats API (POST /api/v2/query) with the
 * key the user entered (localStorage "tally.key"; never in the URL). The view's state lives in
 * the URL hash (#site=…&period=…&f=DIM~VALUE…) so a view can be bookmarked and shared; the hash
 * is the single source of truth: controls write it, render() reads it.
 *
 * Realtime: live.start(site, onCount) is the only place that knows how the current-visitor
 * count arrives: pushed by the WebSocket GET /api/v1/live (the key in its ?key=, the one
 * place the key goes into a URL: browsers cannot set headers on a WebSocket), or polled from
 * the query API (date_range "realtime") every 5 s while the socket cannot be used.
 */
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var KEY = 'tally.key', THEME = 'tally.theme', POLL_MS = 5000, ROWS = 10;

  var TOP = [
    {m: 'visitors', label: 'Unique visitors'},
    {m: 'visits', label: 'Total visits'},
    {m: 'pageviews', label: 'Total pageviews'},
    {m: 'views_per_visit', label: 'Views per visit'},
    {m: 'bounce_rate', label: 'Bounce rate', lowerIsBetter: true},
    {m: 'visit_duration', label: 'Visit duration'}
  ];
  var PANELS = [
    {id: 'sources', title: 'Sources', tabs: [
      ['visit:source', 'Sources'], ['visit:channel', 'Channels'], ['visit:referrer', 'Referrers'],
      ['visit:utm_source', 'UTM source'], ['visit:utm_medium', 'UTM medium'],
      ['visit:utm_campaign', 'UTM campaign'], ['visit:utm_content', 'UTM content'],
      ['visit:utm_term', 'UTM term']]},
    {id: 'pages', title: 'Pages', tabs: [
      ['event:page', 'Top pages'], ['visit:entry_page', 'Entry pages'],
      ['visit:exit_page', 'Exit pages'], ['event:hostname', 'Hostnames']]},
    {id: 'locations', title: 'Locations', tabs: [
      ['visit:country', 'Countries'], ['visit:region', 'Regions'], ['visit:city', 'Cities']]},
    {id: 'devices', title: 'Devices', tabs: [
      ['visit:device', 'Devices'], ['visit:browser', 'Browsers'], ['visit:os', 'Operating systems']]},
    {id: 'goals', title: 'Goals and events', tabs: [
      ['event:name', 'Events'], ['event:goal', 'Goals']]},
    {id: 'props', title: 'Properties', tabs: [['props', 'Property']]}
  ];
  var DIM_LABEL = {};
  PANELS.forEach(function (p) { p.tabs.forEach(function (t) { DIM_LABEL[t[0]] = t[1]; }); });
  DIM_LABEL['event:page'] = 'Page';

  var sites = [], chart = null, generation = 0, regionNames = null;
  try { regionNames = new Intl.DisplayNames(['en'], {type: 'region'}); } catch (e) { /* old */ }

  /* ------------------------------------------------------------ state in the URL hash */

  function readState() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ''));
    var s = {
      site: p.get('site') || '', period: p.get('period') || '7d', from: p.get('from') || '',
      to: p.get('to') || '', compare: p.get('compare') === '1', metric: p.get('metric') || 'visitors',
      prop: p.get('prop') || '', tabs: {}, filters: []
    };
    p.getAll('f').forEach(function (f) {
      var i = f.indexOf('~');
      if (i > 0) s.filters.push([f.slice(0, i), f.slice(i + 1)]);
    });
    PANELS.forEach(function (panel) {
      var t = p.get('tab_' + panel.id);
      if (t && panel.tabs.some(function (x) { return x[0] === t; })) s.tabs[panel.id] = t;
    });
    return s;
  }

  function writeState(s) {
    var p = new URLSearchParams();
    if (s.site) p.set('site', s.site);
    p.set('period', s.period);
    if (s.period === 'custom') { p.set('from', s.from); p.set('to', s.to); }
    if (s.compare) p.set('compare', '1');
    if (s.metric !== 'visitors') p.set('metric', s.metric);
    if (s.prop) p.set('prop', s.prop);
    Object.keys(s.tabs).forEach(function (k) { p.set('tab_' + k, s.tabs[k]); });
    s.filters.forEach(function (f) { p.append('f', f[0] + '~' + f[1]); });
    var h = '#' + p.toString();
    if (h !== location.hash) location.hash = h; /* hashchange renders */
    else render();
  }

  function update(fn) { var s = readState(); fn(s); writeState(s); }

  /* ------------------------------------------------------------ dates */

  function siteZone(name) {
    for (var i = 0; i < sites.length; i++) if (sites[i].name === name) return sites[i].timezone;
    return 'UTC';
  }
  function todayIn(zone) {
    try {
      return new Intl.DateTimeFormat('en-CA', {timeZone: zone, year: 'numeric', month: '2-digit',
        day: '2-digit'}).format(new Date());
    } catch (e) { return new Date().toISOString().slice(0, 10); }
  }
  function addDays(iso, n) {
    var d = new Date(iso + 'T00:00:00Z');
    d.setUTCDate(d.getUTCDate() + n);
    return d.toISOString().slice(0, 10);
  }
  function monthStart(iso, back) {
    var d = new Date(iso.slice(0, 7) + '-01T00:00:00Z');
    d.setUTCMonth(d.getUTCMonth() - back);
    return d.toISOString().slice(0, 10);
  }
  function daysBetween(a, b) { return Math.round((Date.parse(b) - Date.parse(a)) / 864e5) + 1; }

  /* [from, to] as dates in the site's zone, both included. */
  function range(s) {
    var t = todayIn(siteZone(s.site));
    switch (s.period) {
      case 'day': return [t, t];
      case '30d': return [addDays(t, -29), t];
      case 'month': return [monthStart(t, 0), t];
      case '6mo': return [monthStart(t, 5), t];
      case '12mo': return [monthStart(t, 11), t];
      case 'custom':
        if (/^\d{4}-\d\d-\d\d$/.test(s.from) && /^\d{4}-\d\d-\d\d$/.test(s.to) && s.from <= s.to)
          return [s.from, s.to];
        return [addDays(t, -6), t];
      default: return [addDays(t, -6), t];
    }
  }
  function previous(r) { var n = daysBetween(r[0], r[1]); return [addDays(r[0], -n), addDays(r[0], -1)]; }
  function timeDim(r) {
    var n = daysBetween(r[0], r[1]);
    return n <= 1 ? 'time:hour' : n <= 93 ? 'time:day' : 'time:month';
  }

  /* ------------------------------------------------------------ the API */

  function apiKey() { try { return localStorage.getItem(KEY) || ''; } catch (e) { return ''; } }

  function api(path, body) {
    var opts = {headers: {Authorization: 'Bearer ' + apiKey()}};
    if (body) {
      opts.method = 'POST';
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (r.status === 401) { askKey('The key was not accepted: ' + (j.error || r.status)); }
        if (!r.ok) { var e = new Error(j.error || ('HTTP ' + r.status)); e.status = r.status; throw e; }
        return j;
      });
    });
  }

  function query(s, extra) {
    var q = {site_id: s.site, date_range: range(s),
      filters: s.filters.map(function (f) { return ['is', f[0], [f[1]]]; })};
    Object.keys(extra).forEach(function (k) { q[k] = extra[k]; });
    return api('/api/v2/query', q);
  }

  /* The realtime count: see the top of this file. The WebSocket GET /api/v1/live pushes
   * {"type": "visitors"} every few seconds (the key goes in ?key=: browsers cannot set
   * headers on a WebSocket); when the socket cannot open or drops, the count falls back to
   * polling the query API every POLL_MS and the socket is tried again after a minute. */
  var live = {
    stop: function () {},
    start: function (site, onCount) {
      live.stop();
      var timer = 0, stopped = false, ws = null;
      function tick() {
        api('/api/v2/query', {site_id: site, metrics: ['visitors'], date_range: 'realtime'})
          .then(function (j) { if (!stopped) onCount(j.results[0].metrics[0]); },
            function () { if (!stopped) onCount(null); })
          .then(function () { if (!stopped && !ws) timer = setTimeout(tick, POLL_MS); });
      }
      function poll() {
        if (stopped || ws) return;
        tick();
        timer = setTimeout(function () { clearTimeout(timer); if (!stopped) socket(); }, 60000);
      }
      function socket() {
        if (stopped || typeof WebSocket !== 'function') { poll(); return; }
        var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host +
          '/api/v1/live?site_id=' + encodeURIComponent(site) + '&key=' +
          encodeURIComponent(apiKey());
        var opened = false, s;
        try { s = new WebSocket(url); } catch (e) { poll(); return; }
        ws = s;
        s.onopen = function () { opened = true; };
        s.onmessage = function (m) {
          var j;
          try { j = JSON.parse(m.data); } catch (e) { return; }
          if (!stopped && j.type === 'visitors') onCount(j.visitors);
        };
        s.onclose = function () {
          if (ws !== s) return;
          ws = null;
          if (stopped) return;
          if (opened) { timer = setTimeout(socket, 2000); } else { poll(); }
        };
      }
      socket();
      live.stop = function () {
        stopped = true;
        clearTimeout(timer);
        if (ws) { var s = ws; ws = null; s.close(); }
      };
    }
  };

  /* ------------------------------------------------------------ formatting */

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') e.textContent = attrs[k];
      else if (k === 'class') e.className = attrs[k];
      else if (k.slice(0, 2) === 'on') e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    });
    (kids || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function compact(n) {
    if (n == null) return '–';
    if (Math.abs(n) < 1e4) return String(Math.round(n * 100) / 100);
    return new Intl.NumberFormat('en', {notation: 'compact', maximumFractionDigits: 1}).format(n);
  }
  function duration(s) {
    s = Math.round(s || 0);
    if (s < 60) return s + 's';
    var m = Math.floor(s / 60);
    return m < 60 ? m + 'm ' + String(s % 60).padStart(2, '0') + 's'
      : Math.floor(m / 60) + 'h ' + String(m % 60).padStart(2, '0') + 'm';
  }
  function fmt(metric, v) {
    if (v == null) return '–';
    if (metric === 'bounce_rate') return v + '%';
    if (metric === 'visit_duration') return duration(v);
    if (metric === 'views_per_visit') return Number(v).toFixed(2);
    return compact(v);
  }
  function label(dim, v) {
    if (dim === 'visit:country' && regionNames && /^[A-Z]{2}$/.test(v)) {
      try { return regionNames.of(v) + ' (' + v + ')'; } catch (e) { return v; }
    }
    return v;
  }

  /* ------------------------------------------------------------ rendering */

  function showError(msg) {
    var e = $('error');
    e.textContent = msg || '';
    e.hidden = !msg;
  }

  function renderControls(s) {
    var sel = $('site');
    sel.textContent = '';
    sites.forEach(function (x) { sel.appendChild(el('option', {value: x.name, text: x.name})); });
    sel.value = s.site;
    $('period').value = s.period;
    $('custom').hidden = s.period !== 'custom';
    var r = range(s);
    $('from').value = r[0];
    $('to').value = r[1];
    $('compare').checked = s.compare;
    var chips = $('chips');
    chips.textContent = '';
    s.filters.forEach(function (f, i) {
      var name = (DIM_LABEL[f[0]] || f[0].replace(/^(visit|event):/, '')) + ' is ' + label(f[0], f[1]);
      chips.appendChild(el('li', {class: 'chip', 'data-dim': f[0]}, [
        el('span', {text: name}),
        el('button', {type: 'button', class: 'chip-x', 'aria-label': 'Remove filter: ' + name,
          title: 'Remove filter', text: '×',
          onclick: function () { update(function (st) { st.filters.splice(i, 1); }); }})
      ]));
    });
    $('filters').hidden = s.filters.length === 0;
  }

  function change(t, c) {
    if (c == null) return null;
    var good = t.lowerIsBetter ? c < 0 : c > 0, bad = t.lowerIsBetter ? c > 0 : c < 0;
    var unit = t.m === 'bounce_rate' ? ' pp' : '%';
    return el('span', {class: 'change ' + (good ? 'up' : bad ? 'down' : 'flat'),
      text: (c > 0 ? '↑ ' : c < 0 ? '↓ ' : '') + Math.abs(c) + unit,
      title: 'Change from the previous period'});
  }

  function renderTop(s, res) {
    var ul = $('top');
    ul.textContent = '';
    var row = res.results[0] || {metrics: []}, cmp = row.comparison;
    TOP.forEach(function (t, i) {
      var v = row.metrics[i];
      var li = el('li', {}, [el('button', {type: 'button', class: 'stat' +
          (s.metric === t.m ? ' selected' : ''), 'aria-pressed': String(s.metric === t.m),
        'data-metric': t.m, onclick: function () { update(function (st) { st.metric = t.m; }); }}, [
        el('span', {class: 'stat-label', text: t.label}),
        el('span', {class: 'stat-value', 'data-value': String(v), text: fmt(t.m, v)}),
        s.compare && cmp ? change(t, cmp.change[i]) : null,
        s.compare && cmp ? el('span', {class: 'stat-prev', text: 'was ' + fmt(t.m, cmp.metrics[i])}) : null
      ])]);
      ul.appendChild(li);
    });
  }

  function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  function renderChart(s, labels, cur, prev) {
    var box = $('chart');
    if (chart) { chart.destroy(); chart = null; }
    box.textContent = '';
    var td = timeDim(range(s));
    var xs = labels.map(function (l, i) { return i; });
    var metric = TOP.filter(function (t) { return t.m === s.metric; })[0] || TOP[0];
    var data = [xs, cur];
    var series = [{label: td === 'time:hour' ? 'Hour' : td === 'time:month' ? 'Month' : 'Day',
      value: function (u, v) { return v == null || labels[v] == null ? '–' : labels[v].slice(0, td === 'time:hour' ? 16 : 10); }},
      {label: metric.label, stroke: cssVar('--accent'), width: 2,
      fill: cssVar('--accent-fill'), points: {show: labels.length < 40},
      value: function (u, v) { return fmt(metric.m, v); }}];
    if (prev) {
      data.push(prev);
      series.push({label: 'Previous period', stroke: cssVar('--muted'), width: 1.5, dash: [6, 4],
        points: {show: false}, value: function (u, v) { return fmt(metric.m, v); }});
    }
    var axis = {stroke: cssVar('--muted'), grid: {stroke: cssVar('--grid'), width: 1},
      ticks: {stroke: cssVar('--grid'), width: 1}};
    var tick = function (l) {
      return td === 'time:hour' ? l.slice(11, 16) : td === 'time:month' ? l.slice(0, 7) : l.slice(5, 10);
    };
    box.setAttribute('aria-label', metric.label + ' per ' + td.slice(5) + ': ' +
      labels.map(function (l, i) { return tick(l) + ' ' + fmt(metric.m, cur[i]); }).join(', '));
    chart = new uPlot({
      width: Math.max(box.clientWidth, 200), height: 260, data: data, series: series,
      legend: {show: true}, cursor: {drag: {x: false, y: false}},
      scales: {x: {time: false}, y: {range: function (u, lo, hi) { return [0, Math.max(hi, 1) * 1.1]; }}},
      axes: [
        Object.assign({}, axis, {values: function (u, vals) {
          return vals.map(function (v) { return labels[v] != null && v === Math.round(v) ? tick(labels[v]) : ''; });
        }}),
        Object.assign({}, axis, {size: 50, values: function (u, vals) {
          return vals.map(function (v) { return fmt(metric.m, v); });
        }})
      ]
    }, data, box);
  }

  function seriesQuery(s, r, td) {
    var t = TOP.filter(function (x) { return x.m === s.metric; })[0] || TOP[0];
    var st = Object.assign({}, s, {period: 'custom', from: r[0], to: r[1]});
    return query(st, {metrics: [t.m], dimensions: [td], include: {time_labels: true}})
      .then(function (j) {
        var by = {};
        j.results.forEach(function (x) { by[x.dimensions[0]] = x.metrics[0]; });
        var labels = j.meta.time_labels || Object.keys(by);
        return {labels: labels, values: labels.map(function (l) { return by[l] || 0; })};
      });
  }

  function renderPanel(s, panel, gen, total) {
    var dim = s.tabs[panel.id] || panel.tabs[0][0];
    var box = $('panel-' + panel.id);
    var list = box.querySelector('.rows');
    box.querySelectorAll('[role=tab]').forEach(function (b) {
      var on = b.getAttribute('data-dim') === dim;
      b.setAttribute('aria-selected', String(on));
      b.tabIndex = on ? 0 : -1;
    });
    var realDim = dim;
    if (dim === 'props') {
      var input = box.querySelector('.prop-key');
      if (document.activeElement !== input) input.value = s.prop;
      if (!s.prop) { list.textContent = ''; list.appendChild(el('li', {class: 'empty',
        text: 'Enter a property key to break down by it.'})); return Promise.resolve(); }
      realDim = 'event:props:' + s.prop;
    }
    var events = realDim === 'event:name' || realDim === 'event:goal' || dim === 'props';
    var metrics = events ? ['visitors', 'events'] : ['visitors'];
    var head = box.querySelector('.row-head');
    head.textContent = '';
    head.appendChild(el('span', {text: 'Name'}));
    head.appendChild(el('span', {text: events ? 'Events · Visitors' : 'Visitors'}));
    list.setAttribute('aria-busy', 'true');
    return query(s, {metrics: metrics, dimensions: [realDim], pagination: {limit: ROWS + 2}})
      .then(function (j) {
        if (gen !== generation) return;
        list.textContent = '';
        list.removeAttribute('aria-busy');
        var rows = j.results.filter(function (r) {
          return !(realDim === 'event:name' && (r.dimensions[0] === 'pageview' || r.dimensions[0] === 'engagement'));
        }).slice(0, ROWS);
        if (!rows.length) { list.appendChild(el('li', {class: 'empty', text: 'No data for this period'})); return; }
        var max = Math.max.apply(null, rows.map(function (r) { return r.metrics[0]; })) || 1;
        rows.forEach(function (r) {
          var v = r.dimensions[0], name = label(realDim, v);
          var bar = el('span', {class: 'row-bar', 'aria-hidden': 'true'});
          bar.style.width = Math.max(1, Math.round(100 * r.metrics[0] / max)) + '%';
          var pct = total ? Math.round(100 * r.metrics[0] / total) + '%' : '';
          list.appendChild(el('li', {}, [el('button', {type: 'button', class: 'row',
            'data-dim': realDim, 'data-value': v,
            'aria-label': (DIM_LABEL[dim] || dim) + ' ' + name + ': ' + r.metrics[0] +
              ' visitors. Filter by it',
            onclick: function () {
              update(function (st) {
                st.filters = st.filters.filter(function (f) { return f[0] !== realDim; });
                st.filters.push([realDim, v]);
              });
            }}, [bar, el('span', {class: 'row-name', text: name}),
            events ? el('span', {class: 'row-num muted', text: compact(r.metrics[1])}) : null,
            el('span', {class: 'row-num', 'data-value': String(r.metrics[0]), text: compact(r.metrics[0])}),
            el('span', {class: 'row-pct muted', text: pct})])]));
        });
      }, function (e) {
        if (gen !== generation) return;
        list.textContent = '';
        list.removeAttribute('aria-busy');
        list.appendChild(el('li', {class: 'empty', text: e.message}));
      });
  }

  function buildPanels() {
    var root = $('panels');
    PANELS.forEach(function (panel) {
      var tabs = el('div', {class: 'tabs', role: 'tablist', 'aria-label': panel.title});
      panel.tabs.forEach(function (t) {
        if (t[0] === 'props') return;
        tabs.appendChild(el('button', {type: 'button', role: 'tab', 'data-dim': t[0], text: t[1],
          'aria-controls': 'rows-' + panel.id,
          onclick: function () { update(function (st) { st.tabs[panel.id] = t[0]; }); },
          onkeydown: function (ev) {
            var all = Array.prototype.slice.call(tabs.children), i = all.indexOf(ev.target);
            var j = ev.key === 'ArrowRight' ? i + 1 : ev.key === 'ArrowLeft' ? i - 1 : -2;
            if (j === -2) return;
            var next = all[(j + all.length) % all.length];
            next.focus();
            next.click();
          }}));
      });
      var extra = null;
      if (panel.id === 'props') {
        extra = el('form', {class: 'prop-form', onsubmit: function (ev) {
          ev.preventDefault();
          var v = ev.target.querySelector('input').value.trim();
          update(function (st) { st.prop = v; });
        }}, [el('label', {class: 'field'}, [el('span', {text: 'Property key'}),
          el('input', {class: 'prop-key', type: 'text', placeholder: 'e.g. plan', spellcheck: 'false'})]),
          el('button', {type: 'submit', text: 'Show'})]);
      }
      root.appendChild(el('section', {class: 'card panel', id: 'panel-' + panel.id,
        'aria-labelledby': 'h-' + panel.id}, [
        el('header', {class: 'panel-head'}, [el('h2', {id: 'h-' + panel.id, text: panel.title}),
          panel.tabs.length > 1 ? tabs : null]),
        extra,
        el('div', {class: 'row-head muted', 'aria-hidden': 'true'}, [el('span', {text: 'Name'}),
          el('span', {text: 'Visitors'})]),
        el('ul', {class: 'rows', id: 'rows-' + panel.id, role: panel.tabs.length > 1 ? 'tabpanel' : null})
      ]));
    });
  }

  var lastSite = null;
  function render() {
    var s = readState();
    if (!sites.length) return;
    if (!sites.some(function (x) { return x.name === s.site; })) {
      s.site = sites[0].name;
      writeState(s);
      return;
    }
    var gen = ++generation;
    renderControls(s);
    showError('');
    document.title = s.site + ' · Tally';
    if (lastSite !== s.site) {
      lastSite = s.site;
      $('live-count').textContent = '–';
      live.start(s.site, function (n) {
        var c = $('live-count');
        c.textContent = n == null ? '–' : String(n);
        c.setAttribute('data-value', n == null ? '' : String(n));
        $('live-label').textContent = n === 1 ? 'current visitor' : 'current visitors';
      });
    }
    var r = range(s), td = timeDim(r);
    var extra = {metrics: TOP.map(function (t) { return t.m; })};
    if (s.compare) extra.include = {comparisons: {mode: 'previous_period'}};
    document.body.setAttribute('data-loading', 'true');
    var pending = [];
    pending.push(query(s, extra).then(function (j) {
      if (gen !== generation) return;
      renderTop(s, j);
      var total = j.results[0] ? j.results[0].metrics[0] : 0;
      return Promise.all(PANELS.map(function (p) { return renderPanel(s, p, gen, total); }));
    }));
    pending.push(Promise.all([seriesQuery(s, r, td), s.compare ? seriesQuery(s, previous(r), td) : null])
      .then(function (x) {
        if (gen !== generation) return;
        var prev = x[1] ? x[0].labels.map(function (l, i) { return x[1].values[i] || 0; }) : null;
        renderChart(s, x[0].labels, x[0].values, prev);
      }));
    Promise.all(pending).catch(function (e) {
      if (gen === generation) showError('Could not load the statistics: ' + e.message);
    }).then(function () {
      if (gen === generation) document.body.setAttribute('data-loading', 'false');
    });
  }

  /* ------------------------------------------------------------ key and sites */

  function askKey(msg) {
    var d = $('key-dialog'), e = $('key-error');
    e.textContent = msg || '';
    e.hidden = !msg;
    $('key-input').value = '';
    if (!d.open) d.showModal();
  }

  function loadSites() {
    if (!apiKey()) { askKey(''); return; }
    api('/api/v1/sites').then(function (j) {
      sites = j.sites || [];
      if (!sites.length) { showError('This key can read no site yet: send some events first.'); return; }
      render();
    }, function (e) { if (e.status !== 401) showError('Could not list the sites: ' + e.message); });
  }

  /* ------------------------------------------------------------ theme */

  function applyTheme(t) {
    if (t) document.documentElement.setAttribute('data-theme', t);
    else document.documentElement.removeAttribute('data-theme');
    var dark = t ? t === 'dark' : matchMedia('(prefers-color-scheme: dark)').matches;
    $('theme').setAttribute('aria-label', dark ? 'Switch to light theme' : 'Switch to dark theme');
    if (chart) render();
  }

  function init() {
    var stored = null;
    try { stored = localStorage.getItem(THEME); } catch (e) { /* private mode */ }
    applyTheme(stored);
    matchMedia('(prefers-color-scheme: dark)').addEventListener('change', function () {
      var t = null;
      try { t = localStorage.getItem(THEME); } catch (e) { /* */ }
      applyTheme(t);
    });
    $('theme').addEventListener('click', function () {
      var cur = document.documentElement.getAttribute('data-theme') ||
        (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light');
      var t = cur === 'dark' ? 'light' : 'dark';
      try { localStorage.setItem(THEME, t); } catch (e) { /* */ }
      applyTheme(t);
    });
    $('key-button').addEventListener('click', function () { askKey(''); });
    $('key-form').addEventListener('submit', function () {
      try { localStorage.setItem(KEY, $('key-input').value.trim()); } catch (e) { /* */ }
      loadSites();
    });
    $('key-forget').addEventListener('click', function () {
      try { localStorage.removeItem(KEY); } catch (e) { /* */ }
      $('key-input').value = '';
      live.stop();
      lastSite = null;
    });
    $('site').addEventListener('change', function (ev) {
      update(function (s) { s.site = ev.target.value; s.filters = []; });
    });
    $('period').addEventListener('change', function (ev) {
      update(function (s) {
        if (ev.target.value === 'custom') { var r = range(s); s.from = r[0]; s.to = r[1]; }
        s.period = ev.target.value;
      });
    });
    ['from', 'to'].forEach(function (id) {
      $(id).addEventListener('change', function () {
        update(function (s) { s.period = 'custom'; s.from = $('from').value; s.to = $('to').value; });
      });
    });
    $('compare').addEventListener('change', function (ev) {
      update(function (s) { s.compare = ev.target.checked; });
    });
    $('clear-filters').addEventListener('click', function () { update(function (s) { s.filters = []; }); });
    window.addEventListener('hashchange', render);
    if (window.ResizeObserver) {
      var w = 0;
      new ResizeObserver(function () {
        var box = $('chart');
        if (chart && box.clientWidth !== w) { w = box.clientWidth; chart.setSize({width: w, height: 260}); }
      }).observe($('chart'));
    }
    buildPanels();
    loadSites();
  }
  init();
})();
