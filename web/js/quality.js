// Quality menu for /watch: Auto, or a pinned simulcast layer, through the WHEP layer extension
// (POST {session}/layer with {"rid": ...}; {} returns to automatic). The layer list comes from the server's
// "layers" server-sent events (POST {session}/sse, then GET the stream). Self-mounting: it adds its own
// control to the page's .controls box and follows window.castViewer across reconnects.

const NAMES = { h: "High", m: "Medium", l: "Low" };

function label(layer) {
  const name = NAMES[layer.rid] || layer.rid;
  return layer.height ? `${name} (${layer.height}p)` : name;
}

function mount() {
  const box = document.querySelector(".controls") || document.body;
  const wrap = document.createElement("label");
  wrap.className = "quality";
  wrap.textContent = "Quality ";
  const select = document.createElement("select");
  select.id = "quality";
  select.append(new Option("Auto", ""));
  select.disabled = true;
  wrap.append(select);
  box.append(wrap);
  return select;
}

const select = mount();
let sessionUrl = null;
let events = null;
let choice = "";

function setLayers(layers) {
  const rids = layers.filter((l) => l.rid).sort((a, b) => (b.height || 0) - (a.height || 0));
  const current = select.value;
  select.replaceChildren(new Option("Auto", ""), ...rids.map((l) => new Option(label(l), l.rid)));
  select.value = rids.some((l) => l.rid === current) ? current : "";
  select.disabled = rids.length < 2;
}

async function follow(url) {
  sessionUrl = url;
  if (events) events.close();
  events = null;
  try {
    const r = await fetch(`${url}/sse`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(["layers"]),
    });
    if (r.status !== 201) return;
    events = new EventSource(new URL(r.headers.get("Location"), url).href);
    events.addEventListener("layers", (e) => {
      const data = JSON.parse(e.data);
      const video = Object.values(data)[0] || [];
      setLayers(video);
    });
    if (choice) await pin(choice);
  } catch (err) {
    console.warn("quality menu:", err);
  }
}

async function pin(rid) {
  if (!sessionUrl) return;
  const r = await fetch(`${sessionUrl}/layer`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(rid ? { rid } : {}),
  });
  if (r.status !== 200) console.warn("layer change refused:", r.status, await r.text());
}

select.addEventListener("change", () => {
  choice = select.value;
  pin(choice);
});

// the viewer may reconnect (a new session URL): follow it
setInterval(() => {
  const url = window.castViewer?.session?.url;
  if (url && url !== sessionUrl) follow(url);
}, 500);

window.castQuality = { select, pin, get sessionUrl() { return sessionUrl; } };
