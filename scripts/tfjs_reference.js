// Reference outputs of a tfjs graph model, for the parity test of xnect_app/teachers.
// Usage: node scripts/tfjs_reference.js MODEL.json JOB.json
// JOB.json: {"input": NAME, "feeds": [{"file": RAW, "shape": [1,H,W,3]}], "outputs": [NODE...],
//            "out": DIR}; RAW holds int32 little-endian values. Writes DIR/<i>_<k>.bin (float32)
// and DIR/result.json with the shapes. Needs @tensorflow/tfjs-core, -converter and
// -backend-wasm 4.22.0 (npm install, no native binaries).
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-converter');
const wasm = require('@tensorflow/tfjs-backend-wasm');

async function main() {
  const [modelPath, jobPath] = process.argv.slice(2);
  const spec = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
  const job = JSON.parse(fs.readFileSync(jobPath, 'utf8'));
  const dir = path.dirname(modelPath);
  const weightSpecs = [];
  const buffers = [];
  for (const group of spec.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
  }
  const blob = Buffer.concat(buffers);
  const weightData = blob.buffer.slice(blob.byteOffset, blob.byteOffset + blob.byteLength);
  const wasmDir = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json'));
  wasm.setWasmPaths(path.join(wasmDir, 'dist') + path.sep);
  await tf.setBackend(job.backend || 'wasm');
  await tf.ready();
  const tfconv = require('@tensorflow/tfjs-converter');
  const model = await tfconv.loadGraphModel(tf.io.fromMemory({
    modelTopology: spec.modelTopology, format: spec.format, generatedBy: spec.generatedBy,
    convertedBy: spec.convertedBy, signature: spec.signature, weightSpecs, weightData,
  }));
  fs.mkdirSync(job.out, { recursive: true });
  const result = { backend: tf.getBackend(), tfjs: tf.version_core, runs: [] };
  for (let i = 0; i < job.feeds.length; i++) {
    const feed = job.feeds[i];
    const raw = fs.readFileSync(feed.file);
    const values = new Int32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    const input = tf.tensor(values, feed.shape, 'int32');
    const t0 = Date.now();
    let outs = await model.executeAsync({ [job.input]: input }, job.outputs);
    const ms = Date.now() - t0;
    if (!Array.isArray(outs)) outs = [outs];
    const shapes = [];
    for (let k = 0; k < outs.length; k++) {
      const data = await outs[k].data();
      fs.writeFileSync(path.join(job.out, `${i}_${k}.bin`), Buffer.from(new Float32Array(data).buffer));
      shapes.push(outs[k].shape);
      outs[k].dispose();
    }
    input.dispose();
    result.runs.push({ shapes, ms });
  }
  fs.writeFileSync(path.join(job.out, 'result.json'), JSON.stringify(result));
}

main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
