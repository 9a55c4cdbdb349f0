// Inclusion proofs checked in the browser: RFC 9162 §2.1.3.2 over Web Crypto's SHA-256,
// and the checkpoint's Ed25519 signature (C2SP signed note) where the browser has it.
// Nothing here trusts the server's word: the leaf comes from the event's own hash.

const bytes = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
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
  const [name, keyId, encoded] = splitKey(verifierKey.trim());
  const cut = note.lastIndexOf("\n\n");
  const text = note.slice(0, cut + 1);
  const line = note.slice(cut + 2).split("\n").find((l) => l.startsWith(`\u2014 ${name} `));
  if (!line) return null;
  const blob = b64(line.slice(name.length + 3));
  if (hex(blob.slice(0, 4)) !== keyId) return null;
  let key;
  try {
    key = await crypto.subtle.importKey("raw", b64(encoded).slice(1), { name: "Ed25519" }, false, ["verify"]);
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
  const { checkpoints } = await api(`/api/checkpoints?after=${Math.max(0, Number(size) - 1)}&limit=1`);
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
  const latest = await latestCheckpoint(api, token);
  if (!latest) return { ok: false, text: "no checkpoint signed yet" };
  let answer;
  try {
    answer = await api(`/api/proofs/inclusion?position=${position}&tree_size=${latest.size}`);
  } catch (error) { return { ok: false, text: `not provable yet: ${error.message}` }; }
  const ok = latest.signature !== "BAD" && await verifyInclusion(answer.leaf_index, answer.tree_size,
    await leafHash(bytes(eventHash)), answer.proof.map(bytes), bytes(latest.root));
  return ok
    ? { ok, text: `✓ leaf ${answer.leaf_index} of the checkpoint of ${latest.size} events (checked here, signature ${latest.signature})` }
    : { ok, text: "✗ the proof does not lead to the signed root" };
}
