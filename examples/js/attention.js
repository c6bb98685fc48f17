#!/usr/bin/env node
// Multi-head attention from scratch in JavaScript (Node.js, no dependencies), validated by
// attention-conformance through its external protocol "attention-conformance/1":
//
//   conformance run specs/basic.yaml --adapter external:'node examples/js/attention.js'
//
// Modes of this program:
//   node attention.js             persistent: hello line, then one JSON request per stdin line
//   node attention.js CASE_DIR    oneshot: compute the case in CASE_DIR, exit 0 (3: unsupported)
//   node attention.js --describe  print the hello line and exit
//
// Arrays travel as .npy files in the case directory; this file reads <f8/<f4/<f2/|b1 and
// writes <f8. It computes in float64 (JavaScript numbers) whatever the case dtype.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');

const PROTOCOL = 'attention-conformance/1';

const HELLO = {
  protocol: PROTOCOL,
  name: 'js.example.mha',
  summary: 'examples/js/attention.js: multi-head attention written from scratch in JavaScript',
  framework: 'node',
  versions: { node: process.versions.node },
  mask: 'additive', // we receive one float mask [B,H,T,S]: 0 / -inf / finite bias, added to the logits
  dtypes: ['float64', 'float32'],
  features: [
    'kernel', 'layer', 'cross-attention', 'kv-input-dims', 'value-dim', 'output-dim', 'kv-len',
    'grouped-query', 'multi-query', 'causal', 'causal-top-left', 'causal-bottom-right',
    'key-padding', 'query-padding', 'bool-mask', 'per-head-mask', 'additive-mask', 'attn-bias',
    'window', 'fully-masked-rows', 'scale', 'no-bias', 'weights', 'weights-mean',
  ],
  notes: 'computes in float64 (JavaScript numbers) for every dtype',
};

// --- .npy files ------------------------------------------------------------------------------

function halfToFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = buf[6];
  const headerLength = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + headerLength);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: Fortran order`);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1]
    .split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  const size = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLength;
  const data = new Float64Array(size);
  const read = {
    '<f8': (i) => buf.readDoubleLE(offset + 8 * i),
    '<f4': (i) => buf.readFloatLE(offset + 4 * i),
    '<f2': (i) => halfToFloat(buf.readUInt16LE(offset + 2 * i)),
    '|b1': (i) => buf[offset + i],
  }[descr];
  if (!read) throw new Error(`${file}: unsupported dtype ${descr}`);
  for (let i = 0; i < size; i++) data[i] = read(i);
  return { shape, data };
}

function writeNpy(file, shape, data) {
  const dims = shape.join(', ') + (shape.length === 1 ? ',' : '');
  let header = `{'descr': '<f8', 'fortran_order': False, 'shape': (${dims}), }`;
  header += ' '.repeat((64 - ((10 + header.length + 1) % 64)) % 64) + '\n'; // 64-byte aligned
  const buf = Buffer.alloc(10 + header.length + 8 * data.length);
  buf.write('\x93NUMPY', 0, 'latin1');
  buf[6] = 1;
  buf[7] = 0;
  buf.writeUInt16LE(header.length, 8);
  buf.write(header, 10, 'latin1');
  for (let i = 0; i < data.length; i++) buf.writeDoubleLE(data[i], 10 + header.length + 8 * i);
  fs.writeFileSync(file, buf);
}

// --- attention -------------------------------------------------------------------------------

// q [B,H,T,K], k [B,G,S,K], v [B,G,S,V], mask [B,H,T,S] additive or null.
// Query head h reads key/value head floor(h / (H / G)): contiguous groups.
function dotProductAttention(q, k, v, mask, scale) {
  const [B, H, T, K] = q.shape;
  const [, G, S] = k.shape;
  const V = v.shape[3];
  const group = H / G;
  const out = new Float64Array(B * H * T * V);
  const weights = new Float64Array(B * H * T * S);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / group);
      for (let t = 0; t < T; t++) {
        const row = ((b * H + h) * T + t) * S;
        const qo = ((b * H + h) * T + t) * K;
        let peak = -Infinity;
        for (let s = 0; s < S; s++) {
          const ko = ((b * G + g) * S + s) * K;
          let dot = 0;
          for (let i = 0; i < K; i++) dot += q.data[qo + i] * k.data[ko + i];
          const logit = dot * scale + (mask ? mask.data[row + s] : 0);
          weights[row + s] = logit;
          if (logit > peak) peak = logit;
        }
        // A row with every key at -inf: -inf - -inf = NaN, so the row is NaN (like softmax in
        // TensorFlow, JAX, NumPy): what the suite expects by default.
        let total = 0;
        for (let s = 0; s < S; s++) {
          const e = Math.exp(weights[row + s] - peak);
          weights[row + s] = e;
          total += e;
        }
        for (let s = 0; s < S; s++) weights[row + s] /= total;
        const oo = ((b * H + h) * T + t) * V;
        for (let s = 0; s < S; s++) {
          const w = weights[row + s];
          const vo = ((b * G + g) * S + s) * V;
          for (let i = 0; i < V; i++) out[oo + i] += w * v.data[vo + i];
        }
      }
    }
  }
  return { out: { shape: [B, H, T, V], data: out }, weights: { shape: [B, H, T, S], data: weights } };
}

// x [B,L,D], w [N,D,K], bias [N,K] -> [B,N,L,K]
function project(x, w, bias) {
  const [B, L, D] = x.shape;
  const [N, , K] = w.shape;
  const data = new Float64Array(B * N * L * K);
  for (let b = 0; b < B; b++) {
    for (let n = 0; n < N; n++) {
      for (let l = 0; l < L; l++) {
        const o = ((b * N + n) * L + l) * K;
        for (let d = 0; d < D; d++) {
          const xv = x.data[(b * L + l) * D + d];
          const wo = (n * D + d) * K;
          for (let i = 0; i < K; i++) data[o + i] += xv * w.data[wo + i];
        }
        for (let i = 0; i < K; i++) data[o + i] += bias.data[n * K + i];
      }
    }
  }
  return { shape: [B, N, L, K], data };
}

// heads [B,H,T,V], wo [H,V,Do], bo [Do] -> [B,T,Do]
function outputProjection(heads, wo, bo) {
  const [B, H, T, V] = heads.shape;
  const Do = wo.shape[2];
  const data = new Float64Array(B * T * Do);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const o = (b * T + t) * Do;
      for (let i = 0; i < Do; i++) data[o + i] = bo.data[i];
      for (let h = 0; h < H; h++) {
        for (let j = 0; j < V; j++) {
          const hv = heads.data[((b * H + h) * T + t) * V + j];
          const w = (h * V + j) * Do;
          for (let i = 0; i < Do; i++) data[o + i] += hv * wo.data[w + i];
        }
      }
    }
  }
  return { shape: [B, T, Do], data };
}

function headMean(weights) {
  const [B, H, T, S] = weights.shape;
  const data = new Float64Array(B * T * S);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T * S; i++) data[b * T * S + i] += weights.data[(b * H + h) * T * S + i] / H;
    }
  }
  return { shape: [B, T, S], data };
}

class Unsupported extends Error {}

function compute(request) {
  const dir = request.dir;
  const load = (name) => readNpy(path.join(dir, request.inputs[name]));
  const c = request.case;
  if (c.decode || c.add_bias_kv || c.add_zero_attn || c.shape.attention_axes.length) {
    throw new Unsupported('this example handles neither decoding, torch extra keys nor multi-axis');
  }
  const mask = request.mask ? readNpy(path.join(dir, request.mask)) : null;
  let result;
  if (request.mode === 'kernel') {
    result = dotProductAttention(load('q'), load('k'), load('v'), mask, request.scale);
  } else {
    const w = {};
    for (const n of ['wq', 'bq', 'wk', 'bk', 'wv', 'bv', 'wo', 'bo']) w[n] = load(n);
    const q = project(load('query'), w.wq, w.bq);
    const k = project(load('key'), w.wk, w.bk);
    const v = project(load('value'), w.wv, w.bv);
    const heads = dotProductAttention(q, k, v, mask, request.scale);
    result = { out: outputProjection(heads.out, w.wo, w.bo), weights: heads.weights };
  }
  const arrays = { output: result.out, weights: result.weights };
  if (request.compare.includes('weights_mean')) arrays.weights_mean = headMean(result.weights);
  const written = {};
  for (const name of Object.keys(request.outputs)) {
    writeNpy(path.join(dir, request.outputs[name]), arrays[name].shape, arrays[name].data);
    written[name] = request.outputs[name];
  }
  return written;
}

function answer(request) {
  try {
    return { id: request.id, status: 'ok', outputs: compute(request) };
  } catch (error) {
    if (error instanceof Unsupported) return { id: request.id, status: 'unsupported', reason: error.message };
    return { id: request.id, status: 'error', message: String(error && error.stack || error) };
  }
}

function main(argv) {
  if (argv[0] === '--describe') {
    process.stdout.write(JSON.stringify(HELLO) + '\n');
    return;
  }
  if (argv.length === 1) { // oneshot
    const request = JSON.parse(fs.readFileSync(path.join(argv[0], 'request.json'), 'utf8'));
    request.dir = argv[0];
    const reply = answer(request);
    if (reply.status === 'unsupported') {
      process.stderr.write(reply.reason + '\n');
      process.exitCode = 3;
    } else if (reply.status !== 'ok') {
      process.stderr.write(reply.message + '\n');
      process.exitCode = 1;
    }
    return;
  }
  process.stdout.write(JSON.stringify(HELLO) + '\n');
  const lines = readline.createInterface({ input: process.stdin, terminal: false });
  lines.on('line', (line) => {
    if (!line.trim()) return;
    const request = JSON.parse(line);
    if (request.type === 'shutdown') {
      lines.close();
      return;
    }
    process.stdout.write(JSON.stringify(answer(request)) + '\n');
  });
}

main(process.argv.slice(2));
