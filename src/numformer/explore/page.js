// numformer explore: draws the numbers embedded in <script id="numformer-data">. Plain
// JavaScript and canvas, nothing loaded from anywhere.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("numformer-data").textContent);
  const T = D.tokens.length, L = D.attention.length, H = D.attention[0].length;
  const V = D.model.vocab_size;
  const $ = (id) => document.getElementById(id);
  // A GPT's page or a Llama's: the parts of page.html written for the other family are removed.
  const LLAMA = D.model.family === "llama";
  for (const e of document.querySelectorAll(LLAMA ? ".only-gpt2" : ".only-llama")) e.remove();
  // Llama: the key/value head each query head reads (grouped-query attention when fewer than H)
  const KV = D.kv_heads, NKV = KV ? D.model.n_kv_head : H;
  const grouped = NKV < H;
  const headName = (h) => `head ${h + 1}` + (grouped ? ` (key/value head ${KV[h] + 1})` : "");

  // ------------------------------------------------------------------ small helpers

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) e.append(c);
    return e;
  }

  // A token as it can be seen: a newline, a space, a tab and other invisible characters get a sign.
  function shown(s) {
    if (s === undefined || s === null) return "?";
    if (s === "") return "∅";
    return s.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "␣")
      .replace(/[\u0000-\u001f\u007f]/g, (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
  }
  const vocab = (id) => D.vocab[id];
  const tokSpan = (s, cls) => el("span", { class: "tok" + (cls ? " " + cls : ""), text: shown(s) });
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  const fix = (x, d) => (x === null || x === undefined ? "—" : Number(x).toFixed(d));
  const count = (n, what) => `${n.toLocaleString("en-US")} ${what}${n === 1 ? "" : "s"}`;

  // The smallest and largest of a list, skipping null and non-finite entries ([Infinity, -Infinity]
  // if none is left). A loop, never Math.min(...list): spreading a list into a call puts every
  // element on the stack, which overflows at about 100,000 numbers.
  function extent(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) {
      if (v === null || !Number.isFinite(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    return [lo, hi];
  }

  const tip = $("tooltip");
  function showTip(evt, html) {
    tip.innerHTML = html;
    tip.hidden = false;
    const pad = 14, w = tip.offsetWidth, h = tip.offsetHeight;
    let x = evt.clientX + pad, y = evt.clientY + pad;
    if (x + w > window.innerWidth) x = evt.clientX - w - pad;
    if (y + h > window.innerHeight) y = evt.clientY - h - pad;
    tip.style.left = Math.max(0, x) + "px";
    tip.style.top = Math.max(0, y) + "px";
  }
  function hideTip() { tip.hidden = true; }
  const tipTok = (s) => `<span class="tok">${esc(shown(s))}</span>`;

  // The cell under the mouse of a canvas whose grid of n rows × m columns starts at (x0, y0).
  function cellAt(canvas, evt, x0, y0, cw, ch, n, m) {
    const r = canvas.getBoundingClientRect();
    const x = (evt.clientX - r.left) * canvas.width / r.width - x0;
    const y = (evt.clientY - r.top) * canvas.height / r.height - y0;
    const i = Math.floor(y / ch), j = Math.floor(x / cw);
    return (i >= 0 && i < n && j >= 0 && j < m) ? [i, j] : null;
  }

  // A part that cannot be drawn says so in its own section, and the parts after it are still drawn.
  function part(id, draw) {
    try {
      draw();
    } catch (e) {
      console.error(`numformer explore: the part "${id}" could not be drawn:`, e);
      $(id).append(el("p", { class: "caption failed", text: `This part could not be drawn: ${e}` }));
    }
  }

  // ------------------------------------------------------------------ colours

  // Attention: white (0) to dark blue (1), on √weight so that small weights still show.
  function attnColor(v) {
    const t = Math.sqrt(Math.min(1, Math.max(0, v)));
    return [Math.round(255 + (8 - 255) * t), Math.round(255 + (48 - 255) * t), Math.round(255 + (107 - 255) * t)];
  }
  // A number that is not finite (null in the data: NaN or ±inf where the weights overflow float32).
  const NOT_FINITE = [204, 0, 153];
  // Masked cells: a grey hatch, so the causal mask reads as "not allowed", not as "weight 0".
  const hatch = (x, y) => ((x + y) % 6 < 2 ? [180, 180, 180] : [226, 226, 226]);
  // Sequential (0..1): white to a colour.
  const mix = (rgb, t) => rgb.map((c) => Math.round(255 + (c - 255) * Math.min(1, Math.max(0, t))));
  const css = (rgb) => `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
  // Diverging (−1..1): blue, white, red.
  const diverge = (t) => (t >= 0 ? mix([178, 24, 43], t) : mix([33, 102, 172], -t));

  // ------------------------------------------------------------------ header

  const m = D.model;
  $("summary").textContent = [
    m.source ? m.source : (LLAMA ? "a numformer Llama" : "a numformer GPT"),
    (LLAMA ? "Llama: " : "") + `${m.n_layer} layers, ${m.n_head} heads` +
      (grouped ? ` sharing ${m.n_kv_head} key/value head${m.n_kv_head === 1 ? "" : "s"}` : "") +
      `, ${m.n_embd} wide, context ${m.block_size}, vocabulary ${m.vocab_size}`,
    `${m.n_params.toLocaleString("en-US")} parameters, ` +
      (LLAMA ? `RoPE positions (θ = ${m.rope_theta.toLocaleString("en-US")})` : `${m.pos_encoding} positions`),
    `prompt: ${T} token${T === 1 ? "" : "s"}`,
  ].join(" · ");
  if (D.notice) { $("notice").textContent = D.notice; $("notice").hidden = false; }
  if (D.overflow) {                     // the colour of what is not finite, beside the attention's ramp
    const swatch = el("span", { class: "ramp" });
    swatch.style.background = css(NOT_FINITE);
    swatch.style.width = "12px";
    document.querySelector("#attention .controls").append(el("span", { class: "legend" }, swatch, "not a finite number"));
  }

  // ------------------------------------------------------------------ 1. attention

  const state = { layer: 0, head: 0, pos: T - 1 };
  const layerSel = $("attn-layer"), headSel = $("attn-head");
  for (let l = 0; l < L; l++) layerSel.append(el("option", { value: l, text: String(l + 1) }));
  for (let h = 0; h < H; h++) {
    headSel.append(el("option", { value: h, text: String(h + 1) + (grouped ? ` (kv ${KV[h] + 1})` : "") }));
  }
  if (LLAMA) {                          // which query heads read which key/value head
    const g = H / NKV;
    $("attn-groups").textContent = !grouped
      ? `Each of the ${H} query heads has its own key/value head.`
      : NKV === 1 ? `All ${H} query heads share one key/value head (multi-query attention).`
      : `The ${H} query heads share ${NKV} key/value heads, ${g} each: ` +
        Array.from({ length: NKV }, (_, j) => `heads ${j * g + 1}–${(j + 1) * g} read key/value head ${j + 1}`).join(", ") +
        ". Heads of a group see the same keys, each with its own query.";
  }

  const mainCanvas = $("attn-canvas");
  const cell = Math.max(1, Math.min(28, Math.floor(560 / T)));
  // Token labels on both axes: every position's, a pixel or two smaller than the cells (7 to 13
  // pixels), where cells are 9 pixels or more; below that, 9-pixel labels at every labelStep-th
  // position, with a short tick at each labelled row and column.
  const labelFont = cell >= 9 ? Math.min(cell - 2, 13) : 9;
  const labelStep = Math.ceil((labelFont + 2) / cell);
  const labelCtx = mainCanvas.getContext("2d");
  labelCtx.font = `${labelFont}px ui-monospace, "DejaVu Sans Mono", monospace`;
  const widest = extent(D.tokens.map((s) => labelCtx.measureText(shown(s)).width))[1];
  const upright = widest <= labelStep * cell - 2;   // the column labels fit their spacing unrotated
  const margin = Math.min(110, Math.ceil(widest) + 8);
  const band = upright ? labelFont + 8 : margin;   // height of the column labels' band

  function drawAttention() {
    const A = D.attention[state.layer][state.head];
    const n = T * cell;
    mainCanvas.width = margin + n + 2;
    mainCanvas.height = band + n + 2;
    const ctx = mainCanvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, mainCanvas.width, mainCanvas.height);
    const img = ctx.createImageData(n, n);
    const px = img.data;
    for (let i = 0; i < T; i++) {
      const row = A[i];
      for (let j = 0; j < T; j++) {
        const masked = j > i;
        const rgb = masked ? null : row[j] === null ? NOT_FINITE : attnColor(row[j]);
        for (let y = i * cell; y < (i + 1) * cell; y++) {
          let o = (y * n + j * cell) * 4;
          for (let x = j * cell; x < (j + 1) * cell; x++, o += 4) {
            const c = masked ? hatch(x, y) : rgb;
            px[o] = c[0]; px[o + 1] = c[1]; px[o + 2] = c[2]; px[o + 3] = 255;
          }
        }
      }
    }
    ctx.putImageData(img, margin, band);
    ctx.fillStyle = "#1d232b";
    ctx.font = `${labelFont}px ui-monospace, "DejaVu Sans Mono", monospace`;
    ctx.textBaseline = "middle";
    for (let i = 0; i < T; i += labelStep) {
      const label = shown(D.tokens[i]);
      if (labelStep > 1) {            // ticks: which row and column the label belongs to
        ctx.fillRect(margin - 3, band + i * cell + Math.floor(cell / 2), 3, 1);
        ctx.fillRect(margin + i * cell + Math.floor(cell / 2), band - 3, 1, 3);
      }
      ctx.textAlign = "right";
      ctx.fillText(label, margin - 4, band + i * cell + cell / 2);
      if (upright) {
        ctx.textAlign = "center";
        ctx.fillText(label, margin + i * cell + cell / 2, band / 2);
      } else {
        ctx.save();
        ctx.translate(margin + i * cell + cell / 2, band - (labelStep > 1 ? 5 : 4));
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left";
        ctx.fillText(label, 0, 0);
        ctx.restore();
      }
    }
    mainCanvas.dataset.layer = state.layer;
    mainCanvas.dataset.head = state.head;
    mainCanvas.dataset.cell = cell;
    mainCanvas.dataset.labelStep = labelStep;
    mainCanvas.dataset.left = margin;
    mainCanvas.dataset.top = band;
    layerSel.value = state.layer;
    headSel.value = state.head;
    for (const t of document.querySelectorAll(".thumb")) {
      t.classList.toggle("selected", +t.dataset.layer === state.layer && +t.dataset.head === state.head);
    }
  }

  mainCanvas.addEventListener("mousemove", (evt) => {
    const c = cellAt(mainCanvas, evt, margin, band, cell, cell, T, T);
    if (!c) return hideTip();
    const [i, j] = c;
    const q = `query ${i} ${tipTok(D.tokens[i])}`, k = `key ${j} ${tipTok(D.tokens[j])}`;
    if (j > i) return showTip(evt, `${q} → ${k}<br>masked: key ${j} comes after query ${i} (−∞ before the softmax)`);
    const w = D.attention[state.layer][state.head][i][j];
    showTip(evt, `${q} → ${k}<br>layer ${state.layer + 1}, ${headName(state.head)}: weight <b>${w === null ? "not a finite number" : fix(w, 4)}</b>`);
  });
  mainCanvas.addEventListener("mouseleave", hideTip);
  layerSel.addEventListener("change", () => { state.layer = +layerSel.value; drawAttention(); });
  headSel.addEventListener("change", () => { state.head = +headSel.value; drawAttention(); });

  // All heads: small pictures; each pixel shows the largest weight of the block of cells it covers.
  function drawThumb(canvas, A) {
    const S = T <= 96 ? T * Math.max(1, Math.floor(96 / T)) : 96;
    canvas.width = S; canvas.height = S;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(S, S), px = img.data;
    for (let py = 0; py < S; py++) {
      const i0 = Math.floor(py * T / S), i1 = Math.max(i0 + 1, Math.floor((py + 1) * T / S));
      for (let qx = 0; qx < S; qx++) {
        const j0 = Math.floor(qx * T / S), j1 = Math.max(j0 + 1, Math.floor((qx + 1) * T / S));
        let best = -1;
        for (let i = i0; i < i1; i++) {
          for (let j = j0; j < Math.min(j1, i + 1); j++) best = A[i][j] === null ? Infinity : Math.max(best, A[i][j]);
        }
        const c = best < 0 ? hatch(qx, py) : best === Infinity ? NOT_FINITE : attnColor(best);
        const o = (py * S + qx) * 4;
        px[o] = c[0]; px[o + 1] = c[1]; px[o + 2] = c[2]; px[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    canvas.style.width = canvas.style.height = "96px";   // small prompts scaled up, pixel for pixel
  }
  const overview = $("attn-overview");
  overview.style.gridTemplateColumns = `repeat(${H}, max-content)`;
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const c = el("canvas", { class: "pixels" });
      const t = el("div", { class: "thumb", "data-layer": l, "data-head": h, title: `layer ${l + 1}, ${headName(h)}` },
        c, el("div", { text: `L${l + 1} H${h + 1}` + (grouped ? ` kv${KV[h] + 1}` : "") }));
      t.addEventListener("click", () => { state.layer = l; state.head = h; drawAttention(); });
      overview.append(t);
      drawThumb(c, D.attention[l][h]);
    }
  }
  drawAttention();

  // ------------------------------------------------------------------ 2. next token

  // The candidates and logits stored for position t: every token, or the most likely ones.
  function candidates(t) {
    const values = D.logits.values[t];
    const ids = D.logits.complete ? values.map((_, i) => i) : D.logits.ids[t];
    return { ids, values };
  }

  // The distribution numformer.generate.sample_next draws from, step for step:
  //   temperature 0 is greedy; z = logits / temperature; top-k keeps z >= the k-th largest;
  //   p = softmax(z); top-p keeps a token while the mass before it (most likely first) is < top_p,
  //   then renormalises.
  function distribution(values, temperature, topK, topP) {
    const n = values.length;
    const p = new Float64Array(n);
    if (temperature === 0) {
      let best = 0;
      for (let i = 1; i < n; i++) if (values[i] > values[best]) best = i;
      p[best] = 1;
      return p;
    }
    const z = values.map((v) => v / temperature);
    if (topK > 0 && topK < n) {
      const kth = [...z].sort((a, b) => b - a)[topK - 1];
      for (let i = 0; i < n; i++) if (z[i] < kth) z[i] = -Infinity;
    }
    let zmax = -Infinity;
    for (const v of z) zmax = Math.max(zmax, v);
    let sum = 0;
    for (let i = 0; i < n; i++) { p[i] = Math.exp(z[i] - zmax); sum += p[i]; }
    for (let i = 0; i < n; i++) p[i] /= sum;
    if (topP !== null && topP < 1) {
      const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => p[b] - p[a]);  // stable
      const keep = new Uint8Array(n);
      let cum = 0;
      for (const i of order) { cum += p[i]; keep[i] = (cum - p[i]) < topP ? 1 : 0; }
      let kept = 0;
      for (let i = 0; i < n; i++) { if (!keep[i]) p[i] = 0; kept += p[i]; }
      for (let i = 0; i < n; i++) p[i] /= kept;
    }
    return p;
  }

  const tempRange = $("temperature"), tempBox = $("temperature-value");
  const topKBox = $("top-k"), topPRange = $("top-p"), topPBox = $("top-p-value");
  const S0 = D.sampling;
  tempRange.value = tempBox.value = S0.temperature;
  topKBox.value = S0.top_k === null ? 0 : S0.top_k;
  topKBox.max = V;
  topPRange.value = topPBox.value = S0.top_p === null ? 1 : S0.top_p;

  function controls() {
    const temperature = Math.max(0, Number(tempBox.value) || 0);
    const topK = Math.max(0, Math.floor(Number(topKBox.value) || 0));
    let topP = Number(topPBox.value);
    topP = !(topP > 0) || topP >= 1 ? null : topP;
    return { temperature, topK, topP };
  }

  const context = $("next-context");
  D.tokens.forEach((s, i) => {
    const t = tokSpan(s);
    t.dataset.pos = i;
    t.title = `position ${i}`;
    t.addEventListener("click", () => { state.pos = i; drawNext(); });
    context.append(t);
  });

  function drawNext() {
    const { temperature, topK, topP } = controls();
    const { ids, values } = candidates(state.pos);
    if (values.includes(null)) {       // no distribution can be drawn from NaN or ±inf
      for (const t of context.children) t.classList.toggle("selected", +t.dataset.pos === state.pos);
      $("next-bars").replaceChildren();
      $("next-caption").textContent = `After position ${state.pos} (${shown(D.tokens[state.pos])}): the logits ` +
        "are not all finite numbers (the model's numbers overflow), so there is no distribution to draw.";
      $("next-caption").dataset.kept = 0;
      return;
    }
    const p = distribution(values, temperature, topK, topP);
    const order = Array.from(p.keys()).filter((i) => p[i] > 0).sort((a, b) => p[b] - p[a]);
    for (const t of context.children) t.classList.toggle("selected", +t.dataset.pos === state.pos);
    const bars = $("next-bars");
    bars.replaceChildren();
    const top = order.slice(0, 20);
    for (const i of top) {
      const id = ids[i];
      const row = el("div", { class: "bar-row", "data-id": id, "data-p": p[i] },
        tokSpan(vocab(id)),
        el("div", { class: "bar-track" }, el("div", { class: "bar" })),
        el("span", { class: "value", text: fix(p[i], 4) }));
      row.querySelector(".bar").style.width = (100 * p[i] / p[top[0]]) + "%";
      bars.append(row);
    }
    const next = state.pos + 1 < T ? ` The prompt continues with ${esc(shown(D.tokens[state.pos + 1]))}.` : "";
    const filters = [temperature === 0 ? "temperature 0: greedy" : `temperature ${temperature}`,
      topK === 0 ? "no top-k" : topK < ids.length ? `top-k ${topK}` : `top-k ${topK} (keeps all ${ids.length})`,
      topP === null ? "no top-p" : `top-p ${topP}`];
    $("next-caption").textContent =
      `After position ${state.pos} (${shown(D.tokens[state.pos])}); ${filters.join(", ")}: ` +
      `${order.length} token${order.length === 1 ? "" : "s"} can be drawn` +
      (order.length > top.length ? `, the ${top.length} most likely shown.` : ".") + next +
      (D.logits.complete ? "" : ` This page keeps the ${ids.length} most likely of ${V} tokens at each position; the controls filter those.`);
    $("next-caption").dataset.kept = order.length;
  }
  tempRange.addEventListener("input", () => { tempBox.value = tempRange.value; drawNext(); });
  tempBox.addEventListener("input", () => { tempRange.value = tempBox.value; drawNext(); });
  topKBox.addEventListener("input", drawNext);
  topPRange.addEventListener("input", () => { topPBox.value = topPRange.value; drawNext(); });
  topPBox.addEventListener("input", () => { topPRange.value = topPBox.value; drawNext(); });
  drawNext();

  // ------------------------------------------------------------------ 3. the prompt, by probability

  part("prompt", () => {
    const GREEN = [26, 127, 55], RED = [198, 40, 40];
    const losses = D.token_prob.map((p) => (p === null ? null : -Math.log(Math.max(p, 1e-300))));
    const maxLoss = Math.max(1e-9, extent(losses)[1]);
    const colored = $("prompt-colored");
    D.tokens.forEach((s, t) => {
      const span = tokSpan(s, t === 0 ? "first" : "");
      span.dataset.pos = t;
      span.addEventListener("mousemove", (evt) => {
        if (t === 0) return showTip(evt, `${tipTok(s)} is the first token: nothing before it to predict it from.`);
        const ids = D.top5.ids[t - 1], ps = D.top5.probs[t - 1];
        const rows = ids.map((id, k) => `${tipTok(vocab(id))} ${fix(ps[k], 4)}`).join("<br>");
        showTip(evt, `${tipTok(s)} p = <b>${fix(D.token_prob[t], 4)}</b>, loss −log p = <b>${fix(losses[t], 3)}</b>` +
          `<br>the model's top 5 after position ${t - 1}:<br>${rows}`);
      });
      span.addEventListener("mouseleave", hideTip);
      colored.append(span);
    });
    function drawPrompt() {
      const mode = document.querySelector('input[name="prompt-mode"]:checked').value;
      [...colored.children].forEach((span, t) => {
        if (t === 0) return;
        if (D.token_prob[t] === null) { span.style.background = css(NOT_FINITE); span.style.color = "#fff"; return; }
        const rgb = mode === "prob" ? mix(GREEN, D.token_prob[t]) : mix(RED, losses[t] / maxLoss);
        span.style.background = css(rgb);
        const dark = (mode === "prob" ? D.token_prob[t] : losses[t] / maxLoss) > 0.6;
        span.style.color = dark ? "#fff" : "";
      });
      $("prompt-ramp").style.background = `linear-gradient(to right, #fff, ${css(mode === "prob" ? GREEN : RED)})`;
      $("prompt-ramp-label").textContent = mode === "prob" ? "p = 0 → 1" : `loss 0 → ${fix(maxLoss, 2)}`;
    }
    for (const r of document.querySelectorAll('input[name="prompt-mode"]')) r.addEventListener("change", drawPrompt);
    drawPrompt();
    const unknown = losses.slice(1).filter((x) => x === null).length;
    if (unknown) {
      $("prompt-loss").textContent = `The mean cross-entropy is undefined: ${count(unknown, "prediction")} of ` +
        `the prompt's ${T - 1} are not finite numbers.`;
    } else if (T > 1) {
      const mean = losses.slice(1).reduce((a, b) => a + b, 0) / (T - 1);
      $("prompt-loss").textContent = `Mean cross-entropy over the prompt's ${T - 1} predictions: ${fix(mean, 4)} ` +
        `(perplexity ${fix(Math.exp(mean), 2)}).`;
    } else {
      $("prompt-loss").textContent = "A one-token prompt: there is nothing to predict.";
    }
  });

  // ------------------------------------------------------------------ 4. logit lens

  part("logit-lens", () => {
    const BLUE = [11, 92, 173];
    const lens = $("lens-table");
    const head = el("tr", {}, el("th", { class: "row", text: "input →" }));
    D.tokens.forEach((s, t) => head.append(el("th", { text: shown(s), title: `position ${t}` })));
    lens.append(head);
    for (let l = L; l >= 0; l--) {
      const label = l === 0 ? "embedding" : `block ${l}` + (l === L ? " (output)" : "");
      const tr = el("tr", {}, el("th", { class: "row", text: label }));
      for (let t = 0; t < T; t++) {
        const id = D.lens.ids[l][t], p = D.lens.probs[l][t];
        const hit = t + 1 < T && id === D.token_ids[t + 1];
        const td = el("td", { class: hit ? "hit" : "", text: p === null ? "—" : shown(vocab(id)) });
        td.style.background = css(p === null ? NOT_FINITE : mix(BLUE, p));
        if (p === null || p > 0.55) td.style.color = "#fff";
        td.addEventListener("mousemove", (evt) => {
          const nxt = t + 1 < T ? `<br>the token that comes next, ${tipTok(D.tokens[t + 1])}: p = ${fix(D.lens.next_probs[l][t], 4)}` : "";
          showTip(evt, `${label}, position ${t} ${tipTok(D.tokens[t])}<br>` +
            (p === null ? "the probabilities here are not finite numbers" : `most likely next: ${tipTok(vocab(id))} p = <b>${fix(p, 4)}</b>${nxt}`));
        });
        td.addEventListener("mouseleave", hideTip);
        tr.append(td);
      }
      lens.append(tr);
    }
    const actual = el("tr", {}, el("th", { class: "row", text: "comes next →" }));
    for (let t = 0; t < T; t++) actual.append(el("th", { text: t + 1 < T ? shown(D.tokens[t + 1]) : "" }));
    lens.append(actual);
  });

  // ------------------------------------------------------------------ charts

  // Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten.
  function ticks(lo, hi, n) {
    const raw = (hi - lo) / Math.max(1, n), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw);
    const out = [];
    const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
    for (let k = first; k <= last; k++) out.push(k * step);
    return out;
  }

  // A line chart on a canvas: series = [{points: [[x, y], ...], color, width, label}], with axes;
  // the legend sits above the plot.
  function lineChart(canvas, series, opts) {
    const W = opts.width || 460, Hh = opts.height || 270;
    canvas.width = W; canvas.height = Hh;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, Hh);
    const pad = { l: 58, r: 16, t: 30, b: 42 };
    const pts = series.flatMap((s) => s.points).filter((p) => p[1] !== null && Number.isFinite(p[1]));
    let [x0, x1] = pts.length ? extent(pts.map((p) => p[0])) : [0, 1];      // no finite point: empty axes
    let [y0, y1] = pts.length ? extent(pts.map((p) => p[1])) : [0, 1];
    if (opts.yZero) y0 = Math.min(0, y0);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 + 1e-9; y1 += Math.abs(y1) * 0.1 + 1e-9; }
    const yt = ticks(y0, y1, 4);
    y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
    const X = (x) => pad.l + (x - x0) / (x1 - x0) * (W - pad.l - pad.r);
    const Y = (y) => Hh - pad.b - (y - y0) / (y1 - y0) * (Hh - pad.t - pad.b);
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const y of yt) {
      ctx.strokeStyle = "#eef1f4"; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(pad.l + 1, Y(y)); ctx.lineTo(W - pad.r, Y(y)); ctx.stroke();
      ctx.fillStyle = "#5b6573";
      ctx.fillText(opts.yFormat ? opts.yFormat(y) : String(+y.toPrecision(6)), pad.l - 5, Y(y));
    }
    ctx.strokeStyle = "#8a949f";
    ctx.beginPath(); ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, Hh - pad.b); ctx.lineTo(W - pad.r, Hh - pad.b); ctx.stroke();
    ctx.textAlign = "center"; ctx.textBaseline = "top"; ctx.fillStyle = "#5b6573";
    const xt = opts.xTicks || ticks(x0, x1, 5).filter((x) => x >= x0 - 1e-9 && x <= x1 + 1e-9);
    for (const x of xt) ctx.fillText(opts.xFormat ? opts.xFormat(x) : String(+x.toPrecision(6)), X(x), Hh - pad.b + 5);
    if (opts.xLabel) ctx.fillText(opts.xLabel, (pad.l + W - pad.r) / 2, Hh - 17);
    for (const s of series) {
      ctx.strokeStyle = s.color; ctx.lineWidth = s.width || 1.5; ctx.beginPath();
      let started = false;
      for (const [x, y] of s.points) {
        if (y === null || !Number.isFinite(y)) { started = false; continue; }
        if (started) ctx.lineTo(X(x), Y(y)); else ctx.moveTo(X(x), Y(y));
        started = true;
      }
      ctx.stroke();
      if (s.dots) {
        ctx.fillStyle = s.color;
        for (const [x, y] of s.points) if (y !== null && Number.isFinite(y)) { ctx.beginPath(); ctx.arc(X(x), Y(y), 2.5, 0, 7); ctx.fill(); }
      }
    }
    let lx = pad.l;
    ctx.textAlign = "left"; ctx.textBaseline = "middle"; ctx.font = "12px system-ui, sans-serif";
    for (const s of series.filter((s) => s.label)) {
      ctx.fillStyle = s.color; ctx.fillRect(lx, 11, 16, 3);
      ctx.fillStyle = "#1d232b"; ctx.fillText(s.label, lx + 21, 12);
      lx += 34 + ctx.measureText(s.label).width;
    }
  }

  // A heatmap of a rows × cols matrix, cell w × h pixels, with colour(value) -> rgb.
  function heatmap(canvas, M, w, h, colour) {
    const n = M.length, k = M[0].length;
    canvas.width = k * w; canvas.height = n * h;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(k * w, n * h), px = img.data;
    for (let i = 0; i < n; i++) for (let j = 0; j < k; j++) {
      const c = colour(M[i][j]);
      for (let y = i * h; y < (i + 1) * h; y++) for (let x = j * w; x < (j + 1) * w; x++) {
        const o = (y * k * w + x) * 4;
        px[o] = c[0]; px[o + 1] = c[1]; px[o + 2] = c[2]; px[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  // ------------------------------------------------------------------ 5. inside the stream

  part("stream", () => {
    const layerNames = Array.from({ length: L + 1 }, (_, l) => (l === 0 ? "emb" : String(l)));
    const perPos = Array.from({ length: T }, (_, t) => ({
      points: D.residual_norms.map((row, l) => [l, row[t]]), color: "rgba(11,92,173,0.18)", width: 1 }));
    const mean = { points: D.residual_norms.map((row, l) => [l, row.includes(null) ? null : row.reduce((a, b) => a + b, 0) / T]),
      color: "#0b5cad", width: 2.5, dots: true, label: "mean over positions" };
    lineChart($("norm-chart"), [...perPos, mean], {
      yZero: true, xTicks: layerNames.map((_, l) => l), xFormat: (x) => layerNames[x], xLabel: "after the embedding (emb) and after block l" });

    const P = D.positions;
    if (P.kind === "rope") return drawRotation(P);
    const NP = P.table.length, C = P.table[0].length;       // positions shown, channels
    let pmax = 1e-12;
    for (const row of P.table) for (const v of row) pmax = Math.max(pmax, Math.abs(v));
    const pw = Math.max(1, Math.min(16, Math.floor(480 / C))), ph = Math.max(1, Math.min(12, Math.floor(320 / NP)));
    const posCanvas = $("pos-heatmap");
    heatmap(posCanvas, P.table, pw, ph, (v) => diverge(v / pmax));
    $("pos-caption").textContent = (P.kind === "learned"
      ? "the learned position table wpe"
      : `the sinusoidal table P (the article's formula 2) times ${fix(P.scale, 4)}, as the model adds it`) +
      `: rows are positions 0..${NP - 1} (the prompt uses 0..${T - 1}), columns the ${C} channels ` +
      `(blue −${fix(pmax, 3)}, red +${fix(pmax, 3)})`;
    posCanvas.addEventListener("mousemove", (evt) => {
      const c = cellAt(posCanvas, evt, 0, 0, pw, ph, NP, C);
      if (!c) return hideTip();
      showTip(evt, `position ${c[0]}, channel ${c[1]}: ${fix(P.table[c[0]][c[1]], 4)}`);
    });
    posCanvas.addEventListener("mouseleave", hideTip);
    // cosine similarity of the position vectors, (NP, NP)
    const unit = P.table.map((row) => {
      let ss = 0;
      for (const v of row) ss += v * v;
      const n = Math.sqrt(ss) || 1;
      return row.map((v) => v / n);
    });
    const similarity = unit.map((a) => unit.map((b) => { let s = 0; for (let k = 0; k < C; k++) s += a[k] * b[k]; return s; }));
    const sc = Math.max(1, Math.min(12, Math.floor(320 / NP)));
    const simCanvas = $("pos-similarity");
    heatmap(simCanvas, similarity, sc, sc, diverge);
    simCanvas.addEventListener("mousemove", (evt) => {
      const c = cellAt(simCanvas, evt, 0, 0, sc, sc, NP, NP);
      if (!c) return hideTip();
      showTip(evt, `positions ${c[0]} and ${c[1]}: cosine ${fix(similarity[c[0]][c[1]], 3)}`);
    });
    simCanvas.addEventListener("mouseleave", hideTip);
  });

  // A Llama has no position table: RoPE turns pair i = (x_i, x_{i+hs/2}) of every head's q and k
  // by the angle p·ω_i. Drawn: cos and sin of those angles, rows positions, columns pairs.
  function drawRotation(P) {
    const NP = P.cos.length, half = P.omega.length, hs = P.head_size;
    const period = (w) => 2 * Math.PI / w;
    $("rope-lead").textContent = `This model has no position table: nothing is added to its token ` +
      `embeddings. Positions enter attention instead: in every head, q and k (hs = ${hs} numbers each) are ` +
      `cut into ${half} pairs (x_i, x_{i+${half}}), and pair i at position p is turned by the angle p·ω_i, ` +
      `ω_i = θ^(−2i/${hs}), θ = ${P.theta.toLocaleString("en-US")}. Pair 0 turns 1 radian a position (a full ` +
      `turn every ${fix(period(P.omega[0]), 2)} positions); pair ${half - 1} a full turn every ` +
      `${Math.round(period(P.omega[half - 1])).toLocaleString("en-US")} positions. A rotation keeps q's and k's ` +
      `lengths, and the score of a query at m and a key at n depends on n − m only (formula 14).`;
    const pw = Math.max(1, Math.min(40, Math.floor(480 / half))), ph = Math.max(1, Math.min(12, Math.floor(320 / NP)));
    const rows = `rows are positions 0..${NP - 1} (the prompt uses 0..${T - 1}), columns the ${half} pairs ` +
      `i = 0..${half - 1} (−1 blue, +1 red)`;
    for (const [id, M, name] of [["rope-cos", P.cos, "cos"], ["rope-sin", P.sin, "sin"]]) {
      const canvas = $(id);
      heatmap(canvas, M, pw, ph, diverge);
      $(`${id}-caption`).textContent = `${name}(p·ω_i), as RoPE multiplies q and k by it: ${rows}`;
      canvas.addEventListener("mousemove", (evt) => {
        const c = cellAt(canvas, evt, 0, 0, pw, ph, NP, half);
        if (!c) return hideTip();
        const [p, i] = c, a = p * P.omega[i];
        showTip(evt, `position ${p}, pair ${i} (channels ${i} and ${i + half} of each head)<br>` +
          `angle p·ω_i = ${fix(a, 4)} rad (${fix(a / (2 * Math.PI), 3)} turns)<br>` +
          `cos ${fix(P.cos[p][i], 4)}, sin ${fix(P.sin[p][i], 4)}`);
      });
      canvas.addEventListener("mouseleave", hideTip);
    }
  }

  // ------------------------------------------------------------------ 6. training

  part("training", () => {
    const box = $("training-charts");
    if (D.metrics && D.metrics.length) {
      const rows = D.metrics, n = Math.max(D.metrics_count || 0, rows.length), last = rows[rows.length - 1];
      const drawn = rows.length < n ? `; ${count(rows.length, "row")} drawn: the first, lowest and highest of every stretch` : "";
      const lossCanvas = el("canvas", { id: "loss-chart" }), lrCanvas = el("canvas", { id: "lr-chart" });
      box.append(el("figure", {}, lossCanvas, el("figcaption", { text: `loss at each evaluation (${count(n, "evaluation")}${drawn}), last: train ${fix(last.train_loss, 4)}, val ${fix(last.val_loss, 4)}` })));
      lineChart(lossCanvas, [
        { points: rows.map((r) => [r.step, r.train_loss]), color: "#0b5cad", label: "train", dots: rows.length < 40 },
        { points: rows.map((r) => [r.step, r.val_loss]), color: "#d9480f", label: "val", dots: rows.length < 40 },
      ], { xLabel: "step" });
      if (rows.some((r) => r.lr !== null)) {
        box.append(el("figure", {}, lrCanvas, el("figcaption", { text: "learning rate at each evaluation (warmup, then cosine decay)" })));
        lineChart(lrCanvas, [{ points: rows.map((r) => [r.step, r.lr]), color: "#6f42c1", label: "learning rate", dots: rows.length < 40 }],
          { xLabel: "step", yZero: true, yFormat: (y) => (y === 0 ? "0" : y.toExponential(1)) });
      }
    } else {
      box.append(el("p", { class: "caption", text: "No metrics.jsonl with rows to draw was found next to this checkpoint, so there is no training curve to show." }));
    }
  });

  // ------------------------------------------------------------------ 7. the formulas

  part("formulas", () => {
    function fmtValue(v, decimals) {
      const one = (x) => (typeof x === "number" ? (decimals === null ? String(x) : x.toFixed(decimals)) : String(x));
      if (!Array.isArray(v)) return one(v);
      if (!Array.isArray(v[0])) return "[" + v.map(one).join(", ") + "]";
      return v.map((r) => fmtValue(r, decimals)).join("\n");
    }
    const list = $("formula-list");
    for (const f of D.formulas) {
      const card = el("div", { class: "formula", id: `formula-${f.name}` });
      const title = el("h3", { text: `${f.number}. ${f.name.replace(/_/g, " ")} · ${f.title_zh}` });
      card.append(el("div", { class: "head" }, title, el("span", { class: `verdict ${f.verdict}`, text: f.verdict_text })));
      const math = el("div", { class: "math" });
      math.innerHTML = f.mathml;
      card.append(math, el("div", { class: "text", text: f.formula }));
      const inputs = el("div", { class: "inputs" });
      for (const [k, v] of Object.entries(f.inputs)) {
        inputs.append(el("span", { text: `${k}${f.ours.includes(k) ? " (ours)" : ""} = ${fmtValue(v, null).replace(/\n/g, "; ")}` }));
      }
      card.append(el("div", { class: "caption", text: "inputs of the worked example" }), inputs);
      // a formula that is not in the article has nothing printed to check: two columns, not four
      const inArticle = f.in_article !== false;
      const heads = inArticle ? ["quantity", "the article prints", "numformer computes", "check"]
        : ["quantity", "numformer computes"];
      const table = el("table", {}, el("tr", {}, ...heads.map((h) => el("th", { text: h }))));
      for (const s of f.steps) {
        const computed = el("td", { class: "val", text: fmtValue(s.computed, s.decimals) });
        const row = el("tr", { class: s.result ? "result" : "" }, el("td", { text: s.label }));
        if (!inArticle) {
          row.append(computed);
        } else {
          const printed = s.printed ? (s.printed.decimals === null ? "= " : "≈ ") + fmtValue(s.printed.value, s.printed.decimals) : "—";
          const check = s.printed === null ? ["open", "not printed"]
            : s.agrees ? ["agrees", "agrees"] : ["differs", `differs by ${s.diff}`];
          row.append(el("td", { class: "val", text: printed }), computed, el("td", { class: `check ${check[0]}`, text: check[1] }));
        }
        table.append(row);
      }
      card.append(table, el("p", { class: "note", text: f.note }));
      list.append(card);
    }
  });

  // For the browser tests and the curious: the state and the two functions the panels use.
  window.numformerExplorer = { data: D, state, distribution, attnColor, drawAttention, drawNext };
})();
