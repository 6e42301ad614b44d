// transformers.js imports `Tensor` from onnxruntime-common; the ORT Web bundle carries its own copy, and
// the two must be one (ORT checks feeds with instanceof), so re-export the bundle's.
export * from "./vendor/ort.webgpu.bundle.min.mjs";
