// WebRTC sessions from a test page on the relay's own origin (its WHIP and WHEP endpoints),
// shared by the browser tests' page helpers (`window.mq`, `window.sc`, `window.mig`), which
// build their publish, play and stats on these. Installed by `Chromium::on_relay_page`.
window.cc = (() => {
  const sessions = new Map();
  let next = 1;
  // Offers, POSTs the offer to `path`, takes the answer; keeps the answer, Location and ETag.
  async function negotiate(s, path) {
    await s.pc.setLocalDescription(await s.pc.createOffer());
    const res = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/sdp" },
      body: s.pc.localDescription.sdp,
    });
    const text = await res.text();
    if (res.status !== 201) throw new Error(`${res.status} ${text.trim()}`);
    s.answer = text;
    s.location = res.headers.get("Location");
    s.etag = res.headers.get("ETag");
    await s.pc.setRemoteDescription({ type: "answer", sdp: text });
  }
  // A session on `path` ("/whip/cam", "/whep/cam?layer=l"): `setup(pc)` adds its tracks. Its
  // id at once; a failure is kept in the session's `error`, not thrown.
  async function start(path, setup) {
    const id = next++;
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    const s = { pc, error: null, answer: "", location: null, etag: null };
    sessions.set(id, s);
    try {
      await setup(pc);
      await negotiate(s, path);
    } catch (e) {
      s.error = String(e.message || e);
    }
    return id;
  }
  // A player's setup: audio and video received into a video element on the page.
  async function receive(pc) {
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
    const v = document.createElement("video");
    v.autoplay = true; v.muted = true; v.playsInline = true;
    document.body.appendChild(v);
    pc.ontrack = (e) => { v.srcObject = e.streams[0] || new MediaStream([e.track]); };
  }
  // A publisher's setup: the fake camera (`video`: getUserMedia's constraints) and microphone.
  function sendCamera(video) {
    return async (pc) => {
      const media = await navigator.mediaDevices.getUserMedia({ audio: true, video });
      for (const t of media.getTracks()) pc.addTransceiver(t, { direction: "sendonly", streams: [media] });
    };
  }
  function session(id) { return sessions.get(id); }
  return { start, receive, sendCamera, session };
})();
return true;
