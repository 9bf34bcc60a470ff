// How a case is named and drawn: by its key (never its point id), in its true proportions.

const SHORT_ID = 8; // characters of a de-identified hash shown; the whole on hover

export const short = (id) => String(id).slice(0, SHORT_ID);

// A value as shown: several (a list of findings) joined.
export const shown = (value) => (Array.isArray(value) ? value.join(", ") : String(value ?? ""));

// `BraTS_005 t2 slice 34`, `series 88858ae4 · instance 12 · T1 AXIAL`, `00020669_001.png`.
export function caseName(payload) {
  if (payload.case_id && payload.modality && payload.slice_index != null) {
    return `${payload.case_id} ${payload.modality} slice ${payload.slice_index}`;
  }
  if (payload.series) {
    const instance = payload.instance_number == null ? "" : `instance ${payload.instance_number}`;
    return [`series ${short(payload.series)}`, instance, payload.series_description]
      .filter(Boolean)
      .join(" · ");
  }
  const key = String(payload.source?.key ?? "");
  return key.split("/").pop() || key; // a path's file name: the image's own name
}

// mm between rows, then between columns (DICOM's PixelSpacing; NIfTI's shown slice);
// [1, 1] where the data states none.
export function spacingOf(payload) {
  const spacing = payload?.pixel_spacing;
  const valid = Array.isArray(spacing) && spacing.length === 2 && spacing.every((v) => v > 0);
  return valid ? spacing : [1, 1];
}

// Width over height of a picture in the patient: its pixels times their spacing.
export function physicalRatio(img, spacing) {
  const [rowMM, columnMM] = spacing;
  return (img.naturalWidth * columnMM) / (img.naturalHeight * rowMM);
}

// An <img> inside a square frame, as large as fits in its true proportions (again at each
// load: a frame's <img> may be given another picture).
export function fitInFrame(img, spacing) {
  img.dataset.spacing = spacing.join(",");
  if (img.complete && img.naturalWidth) place(img);
  if (!fitted.has(img)) img.addEventListener("load", () => place(img));
  fitted.add(img);
}

const fitted = new WeakSet();

function place(img) {
  const ratio = physicalRatio(img, img.dataset.spacing.split(",").map(Number));
  img.style.width = ratio >= 1 ? "100%" : `${ratio * 100}%`;
  img.style.height = ratio >= 1 ? `${100 / ratio}%` : "100%";
  img.dataset.ratio = ratio.toFixed(4);
}
