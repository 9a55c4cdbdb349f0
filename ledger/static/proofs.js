// Inclusion proofs checked in the browser: RFC 9162 §2.1.3.2 over Web Crypto's SHA-256,
// and the checkpoint's Ed25519 signature (C2SP signed note) where the browser has it.
// The proof is checked here, not taken on the server's word; the event's hash and the
// verifier key still come from the server (an auditor pins the key: README, "Auditing").

function bytes(text) {
  if (typeof text !== "string" || !/^[0-9a-f]{64}$/.test(text)) throw new Error("not a 32-byte hex hash");
  return Uint8Array.from(text.match(/../g), (h) => parseInt(h, 16));
}
const hex = (data) => Array.from(new Uint8Array(data), (b) => b.toString(16).padStart(2, "0")).join("");
const b64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

async function sha256(...parts) {
  const joined = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) { joined.set(part, at); at += part.length; }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", joined));
}

const leafHash = (data) => sha256(Uint8Array.of(0), data);
const nodeHash = (left, right) => sha256(Uint8Array.of(1), left, right);

export async function verifyInclusion(index, size, leaf, proof, root) {
  if (index < 0 || index >= size) return false;
  let fn = BigInt(index), sn = BigInt(size - 1), r = leaf;
  for (const p of proof) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n; sn >>= 1n;
  }
  return sn === 0n && hex(r) === hex(root);
}

// The note's text if the verifier key ("name+keyid+base64") signed it; null if not; and
// undefined when this browser has no Ed25519 in Web Crypto.
export async function openNote(note, verifierKey) {
  let name, keyId, raw, blob, text;
  try {
    [name, keyId, raw] = splitKey(verifierKey.trim());
    raw = b64(raw);
    const cut = note.lastIndexOf("\n\n");
    text = note.slice(0, cut + 1);
    const line = note.slice(cut + 2).split("\n").find((l) => l.startsWith(`\u2014 ${name} `));
    if (!line || raw.length !== 33 || raw[0] !== 1) return null;
    blob = b64(line.slice(name.length + 3));
  } catch { return null; }  // a malformed key or note
  if (hex(blob.slice(0, 4)) !== keyId) return null;
  let key;
  try {
    key = await crypto.subtle.importKey("raw", raw.slice(1), { name: "Ed25519" }, false, ["verify"]);
  } catch { return undefined; }
  const good = await crypto.subtle.verify({ name: "Ed25519" }, key, blob.slice(4), new TextEncoder().encode(text));
  return good ? text : null;
}

function splitKey(line) {
  const first = line.indexOf("+"), second = line.indexOf("+", first + 1);
  return [line.slice(0, first), line.slice(first + 1, second), line.slice(second + 1)];
}

// The latest checkpoint: its size, root and time, and whether its signature checked out.
export async function latestCheckpoint(api, token) {
  const note = await fetch("/api/checkpoint", { headers: { Authorization: `Bearer ${token}` } });
  if (!note.ok) return null;
  const text = await note.text();
  const [, size, root] = text.split("\n");
  const { checkpoints } = Number(size) > 0
    ? await api(`/api/checkpoints?after=${Number(size) - 1}&limit=1`) : { checkpoints: [] };
  const key = await (await fetch("/api/checkpoint/key")).text();
  const signed = await openNote(text, key);
  return {
    size: Number(size),
    root: hex(b64(root)),
    signedAt: checkpoints[0]?.signed_at,
    signature: signed === undefined ? "unchecked (no Ed25519 in this browser)" : signed ? "good" : "BAD",
  };
}

// Prove one event (its position and hash, from the export) against the latest checkpoint.
export async function proveEvent(api, token, position, eventHash) {
  if (!globalThis.crypto?.subtle) return { ok: false, text: "no Web Crypto here (the page needs https)" };
  const latest = await latestCheckpoint(api, token);
  if (!latest) return { ok: false, text: "no checkpoint signed yet" };
  if (latest.signature === "BAD") return { ok: false, text: "✗ the latest checkpoint's signature does not verify" };
  let answer;
  try {
    answer = await api(`/api/proofs/inclusion?position=${position}&tree_size=${latest.size}`);
  } catch (error) { return { ok: false, text: `not provable yet: ${error.message}` }; }
  const ok = answer.tree_size === latest.size && await verifyInclusion(answer.leaf_index, latest.size,
    await leafHash(bytes(eventHash)), answer.proof.map(bytes), bytes(latest.root));
  return ok
    ? { ok, text: `✓ leaf ${answer.leaf_index} of the checkpoint of ${latest.size} events (checked here, signature ${latest.signature})` }
    : { ok, text: "✗ the proof does not lead to the signed root" };
}
