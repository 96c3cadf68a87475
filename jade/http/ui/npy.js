// A reader of NumPy's .npy format (versions 1 to 3) for 2-D float32/float64 arrays, enough to
// upload embeddings saved with numpy.save. Format: "\x93NUMPY", major, minor, the header's
// length (2 bytes little-endian in version 1, 4 bytes after), an ASCII Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (rows, cols), } padded to a multiple of
// 64 bytes, then the data.

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

export class NpyError extends Error {}

export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new NpyError("not a .npy file (no \\x93NUMPY magic)");
  }
  const major = bytes[6];
  const view = new DataView(buffer);
  let headerLen;
  let start;
  if (major === 1) { headerLen = view.getUint16(8, true); start = 10; }
  else if (major === 2 || major === 3) { headerLen = view.getUint32(8, true); start = 12; }
  else throw new NpyError(".npy version " + major + " is not supported (1 to 3 are)");
  if (start + headerLen > bytes.length) throw new NpyError("the .npy header is cut short");
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1")
    .decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header);
  const shape = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw new NpyError("cannot read the .npy header: " + header.trim());
  const type = /^([<>|=]?)f([48])$/.exec(descr[1]);
  if (!type) {
    throw new NpyError("the array holds '" + descr[1] + "': only float32 (<f4) and float64 (<f8) arrays can be uploaded");
  }
  const dims = shape[1].split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  if (dims.length !== 2 && dims.length !== 1) {
    throw new NpyError("the array has shape (" + dims.join(", ") + "): a 2-D array (rows, dimension) is expected");
  }
  const [rows, cols] = dims.length === 2 ? dims : [1, dims[0]];
  const size = type[2] === "4" ? 4 : 8;
  const little = type[1] !== ">";
  const offset = start + headerLen;
  if (offset + rows * cols * size > bytes.length) {
    throw new NpyError("the file is shorter than its header says (" + rows + " × " + cols + " values)");
  }
  const fortranOrder = fortran[1] === "True";
  const read = size === 4 ? (p) => view.getFloat32(p, little) : (p) => view.getFloat64(p, little);
  return {
    rows,
    cols,
    dtype: size === 4 ? "float32" : "float64",
    // row i as a Float32Array (what the server stores)
    row(i) {
      const out = new Float32Array(cols);
      for (let j = 0; j < cols; j++) {
        const k = fortranOrder ? j * rows + i : i * cols + j;
        out[j] = read(offset + k * size);
      }
      return out;
    },
  };
}

// base64 of a Float32Array as little-endian bytes (the API's "valuesB64")
export function float32ToB64(arr) {
  const buf = new ArrayBuffer(arr.length * 4);
  const dv = new DataView(buf);
  for (let i = 0; i < arr.length; i++) dv.setFloat32(i * 4, arr[i], true);
  const bytes = new Uint8Array(buf);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}
