"""Face finding (MTCNN from facenet-pytorch) and the one face-crop geometry used everywhere.

Crop geometry (GUIDE.md section 3, measured on the `dfdc-faces` training crops): a square of side
s = mean(box width, box height), centred on the box centre shifted down by 0.049 s. Training data
were cut this way, so inference must be too, or the models see faces framed differently.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from process_wide import once

# ---- Detector settings (limits documented in README "Limits and safety") ----------------------------
MIN_FACE_PROBABILITY = 0.9
MIN_FACE_SIZE_PX = 20
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)        # P-Net, R-Net, O-Net stage thresholds
MAX_FACES_PER_IMAGE = 32                  # more faces than this: the largest 32 are scored
DETECTION_MAX_SIDE = 1024                 # images are downscaled to this for face finding
# Following faces between analysed video frames (FaceDetector.follow; when: media.FOLLOW_MAX_GAP_S):
FOLLOW_CANDIDATE_SCALES = (1.0, 1.3)   # candidate squares around each face of the previous frame
# Box consensus (settle_boxes): O-Net regresses these squares around each found box, (dx, dy) in
# units of the box's longer side, then a scale of it; the regressed boxes are averaged.
CONSENSUS_SHIFT, CONSENSUS_SCALE = 0.08, 0.10
CONSENSUS_CANDIDATES = ((0.0, 0.0, 1.0),
                        (CONSENSUS_SHIFT, 0.0, 1.0), (-CONSENSUS_SHIFT, 0.0, 1.0),
                        (0.0, CONSENSUS_SHIFT, 1.0), (0.0, -CONSENSUS_SHIFT, 1.0),
                        (0.0, 0.0, 1.0 - CONSENSUS_SCALE), (0.0, 0.0, 1.0 + CONSENSUS_SCALE))
# Every box is settled on a patch of the full-resolution image resampled so that the face's side is this
# many px: O-Net's regressions depend on how many pixels the face has (a face settled at 55 px comes out
# 1.8 % smaller and 1.4 % lower than at 229 px), and not once it is resampled to a common size (the same
# 55 px face upscaled to 224 px: within 0.1 %; docs/performance.md, session 11). The `dfdc-faces`
# geometry was measured on faces of this order (crops upscaled to 224 px, GUIDE.md section 3).
SETTLE_FACE_PX = 224
# Settling rounds: each round starts from the last round's boxes. The same faces found at 640 px and
# at full size (100 frames of make bench's video) settle 1 - IoU 0.014 apart after one round, 0.007
# after two and 0.005 after three; two rounds also cut the val re-framing spread (mean 0.038 -> 0.030)
# and shrink the box by 0.3 % of its side on average, far inside the training box jitter
# (scripts/experiments/settle_rounds.py; docs/training.md, session 14).
SETTLE_ROUNDS = 2
# How far the consensus squares reach from a box's centre, in units of its side (+ a margin): the patch
# a face is settled on holds all of them, so none is cut short by the patch's edge.
CONSENSUS_REACH = max(abs(dx) + abs(dy) + s / 2 for dx, dy, s in CONSENSUS_CANDIDATES) + 0.05
# ---- Crop geometry (recorded in every converted model's manifest, see model_store.DEFAULT_CROP) -------
CROP_Y_SHIFT = 0.049
CANONICAL_CROP_SIZE = 224  # the dataset's crop size; each model then resizes to its own input


@dataclass
class Face:
    """One detected face in one image/frame, with coordinates in that image's pixels."""
    box: tuple[float, float, float, float]            # x1, y1, x2, y2
    probability: float
    landmarks: list[tuple[float, float]] = field(default_factory=list)  # eyes, nose, mouth corners
    frame: int = 0

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def to_dict(self) -> dict:
        return {"frame": self.frame, "box": [round(float(v), 1) for v in self.box],
                "detection_probability": round(float(self.probability), 4),
                "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks]}


def clip_box(box, shape) -> tuple[float, float, float, float]:
    """`box` (x1, y1, x2, y2) clipped to an image of `shape` (h, w, ...)."""
    h, w = shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)


def crop_square(box) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the training-geometry square for an MTCNN box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = ((x2 - x1) + (y2 - y1)) / 2.0
    return (x1 + x2) / 2.0, (y1 + y2) / 2.0 + CROP_Y_SHIFT * side, side


def crop_face(image: np.ndarray, box, out_size: int = CANONICAL_CROP_SIZE) -> np.ndarray:
    """Cut the training-geometry square around `box` from an RGB uint8 image; pads with black."""
    cx, cy, side = crop_square(box)
    side = max(side, 1.0)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(int(round(side)), 1)
    h, w = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    square = np.zeros((s, s, 3), dtype=np.uint8)
    if sx1 > sx0 and sy1 > sy0:
        square[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if s > out_size else cv2.INTER_CUBIC
    return cv2.resize(square, (out_size, out_size), interpolation=interp)


def downscaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """`image` (contiguous) with its longer side at most `max_side` (area resampling), and the scale."""
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image), scale


def mtcnn_input(images: list[np.ndarray]) -> torch.Tensor:
    """Same-sized RGB images as the NHWC batch MTCNN takes, laid out so that MTCNN's own NHWC -> NCHW
    permute yields contiguous memory.

    MTCNN spends about a third of its time in area resampling (its image pyramid and the candidate
    crops); on the strided tensor a plain NHWC batch becomes after that permute, the resampling runs
    ~30 % slower than on contiguous memory. Same numbers either way, so the boxes are identical
    (tests/test_faces.py); 100 frames at 640 px: 5.8 -> 5.25 s CPU (docs/performance.md).
    """
    nchw = np.stack([image.transpose(2, 0, 1) for image in images])   # one copy, contiguous NCHW
    return torch.from_numpy(nchw).permute(0, 2, 3, 1)


class FaceDetector:
    """Batched MTCNN; frames are downscaled to at most DETECTION_MAX_SIDE for speed, boxes mapped back.
    Every box is then settled (`settle_boxes_at_face_size`; `consensus=False` keeps MTCNN's boxes as found).

    MTCNN is not re-entrant (its modules are shared), so calls are serialised by a lock; the detector
    is built once per process and reused.
    """

    def __init__(self, min_probability: float = MIN_FACE_PROBABILITY, max_side: int = DETECTION_MAX_SIDE,
                 max_faces: int = MAX_FACES_PER_IMAGE, consensus: bool = True):
        from facenet_pytorch import MTCNN  # bundles its own weights: no download

        self.min_probability = min_probability
        self.max_side = max_side
        self.max_faces = max_faces
        self.consensus = consensus     # settle every box (settle_boxes_at_face_size) on the full-size image
        self._mtcnn = MTCNN(keep_all=True, device="cpu", min_face_size=MIN_FACE_SIZE_PX,
                            thresholds=list(MTCNN_THRESHOLDS), post_process=False)
        # channels_last weights: P-Net's conv/PReLU/max-pool then run in oneDNN's fast layout
        # (measured 52 -> 38 ms per 640 px frame on 1 core, boxes equal to 1e-4 px; docs/performance.md).
        for net in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
            net.to(memory_format=torch.channels_last)
        self._lock = threading.Lock()

    def detect(self, images: list[np.ndarray], frame_indices: list[int] | None = None,
               max_side: int | None = None) -> list[list[Face]]:
        """Faces (probability >= threshold, largest first, at most max_faces) for each RGB image;
        `frame_indices` (default 0, 1, ...) become the faces' `frame`."""
        max_side = max_side or self.max_side
        if not images:
            return []
        indices = frame_indices if frame_indices is not None else list(range(len(images)))
        results: list[list[Face]] = [[] for _ in images]
        # MTCNN batches only same-sized images: group by shape after downscaling.
        groups: dict[tuple, list[int]] = {}
        scaled: list[np.ndarray] = []
        scales: list[float] = []
        for i, img in enumerate(images):
            small, scale = downscaled(img, max_side)
            scaled.append(small)
            scales.append(scale)
            groups.setdefault(small.shape, []).append(i)
        for shape, members in groups.items():
            if min(shape[:2]) < 12:  # below MTCNN's smallest pyramid level: nothing to find
                continue
            batch = mtcnn_input([scaled[i] for i in members])
            with self._lock, torch.inference_mode():
                boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
            for j, i in enumerate(members):
                results[i] = self._settled(images[i], self._faces_from(boxes[j], probs[j], points[j], scales[i],
                                                                       indices[i], images[i].shape))
        return results

    def follow(self, image: np.ndarray, previous: list[Face], frame_index: int = 0,
               max_side: int | None = None) -> list[Face] | None:
        """The faces of `previous` (found in the analysed frame before) in `image`, or None if any of
        them is not confirmed there: then the caller searches `image` in full with `detect`.

        MTCNN spends ~85 % of its time on its first stage: resampling the whole frame into an image
        pyramid and sliding P-Net over it (docs/performance.md). Between nearby frames a face moves by
        a fraction of its size, so its previous box, squared and enlarged, is a candidate as good as
        P-Net's: MTCNN's own second and third stages (R-Net, O-Net, their box regression and NMS,
        the same thresholds) judge and refine it. New faces are not looked for here; the caller
        searches in full at least every media.FULL_SEARCH_EVERY frames and whenever a face is lost."""
        if not previous:
            return None
        small, scale = downscaled(image, max_side or self.max_side)
        candidates = []
        for face in previous:
            x1, y1, x2, y2 = (v * scale for v in face.box)
            cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
            candidates += [(cx - f * side / 2, cy - f * side / 2, cx + f * side / 2, cy + f * side / 2)
                           for f in FOLLOW_CANDIDATE_SCALES]
        img = mtcnn_input([small]).permute(0, 3, 1, 2).float()
        with self._lock, torch.inference_mode():
            boxes, probs, points = _refine_candidates(self._mtcnn, img, torch.tensor(candidates),
                                                      MTCNN_THRESHOLDS[1:])
        faces = self._faces_from(boxes, probs, points, scale, frame_index, image.shape)
        return self._settled(image, faces) if len(faces) >= len(previous) else None

    def _settled(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        """`faces` with their boxes and landmarks settled on the caller's full-resolution `image`
        (`settle_boxes_at_face_size`: the same box whatever size of frame MTCNN searched and however
        many pixels the face has)."""
        if not self.consensus or not faces:
            return faces
        with self._lock, torch.inference_mode():
            boxes, points = settle_boxes_at_face_size(self._mtcnn.onet, image, np.array([f.box for f in faces]))
        settled = [Face(box=clip_box(b, image.shape), probability=f.probability,
                        landmarks=[(float(x), float(y)) for x, y in pts], frame=f.frame)
                   for f, b, pts in zip(faces, boxes, points)]
        settled.sort(key=lambda f: f.area, reverse=True)   # still largest first: settling resizes the boxes
        return settled

    def _faces_from(self, boxes, probs, points, scale, frame, shape) -> list[Face]:
        if boxes is None:
            return []
        # Under numpy 2, MTCNN returns object arrays: cast before arithmetic.
        boxes = np.asarray(boxes).astype(np.float32).reshape(-1, 4) / scale
        probs = np.asarray(probs).astype(np.float32).reshape(-1)
        points = np.asarray(points).astype(np.float32).reshape(-1, 5, 2) / scale
        faces = []
        for box, prob, pts in zip(boxes, probs, points):
            if not np.isfinite(prob) or prob < self.min_probability:
                continue
            x1, y1, x2, y2 = box
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            faces.append(Face(box=clip_box(box, shape), probability=float(prob),
                              landmarks=[(float(x), float(y)) for x, y in pts], frame=frame))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces[: self.max_faces]


def _refine_candidates(mtcnn, img: torch.Tensor, candidates: torch.Tensor, thresholds):
    """MTCNN's second and third stages (facenet-pytorch's detect_face after its P-Net stage, with its
    own helpers) on candidate boxes (N, 4) in `img` (1, 3, H, W float, 0-255): boxes (M, 4), their
    O-Net probabilities (M,) and landmarks (M, 5, 2), as numpy."""
    from facenet_pytorch.models.utils.detect_face import bbreg, batched_nms_numpy, imresample, pad, rerec
    from torchvision.ops import nms

    h, w = img.shape[2:]

    def crops(boxes, size):
        y, ey, x, ex = pad(boxes, w, h)
        nonempty = torch.from_numpy((ey > y - 1) & (ex > x - 1))
        patches = [imresample(img[:, :, y[k] - 1:ey[k], x[k] - 1:ex[k]], (size, size))
                   for k in range(len(y)) if nonempty[k]]
        data = torch.cat(patches) if patches else img.new_zeros((0, 3, size, size))
        return (data - 127.5) * 0.0078125, nonempty

    none = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    boxes = rerec(torch.cat([candidates.float(), torch.zeros(len(candidates), 1)], dim=1))
    # Second stage: R-Net scores and regresses each candidate square.
    data, nonempty = crops(boxes, 24)
    boxes = boxes[nonempty]
    if not len(boxes):
        return none
    reg, prob = mtcnn.rnet(data)
    passed = prob[:, 1] > thresholds[0]
    boxes = torch.cat([boxes[passed, :4], prob[passed, 1:2]], dim=1)
    reg = reg[passed]
    keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = rerec(bbreg(boxes[keep], reg[keep]))
    if not len(boxes):
        return none
    # Third stage: O-Net scores, regresses and places the landmarks.
    data, nonempty = crops(boxes, 48)
    boxes = boxes[nonempty]
    if not len(boxes):
        return none
    reg, marks, prob = mtcnn.onet(data)
    passed = prob[:, 1] > thresholds[1]
    boxes, reg, marks = torch.cat([boxes[passed, :4], prob[passed, 1:2]], dim=1), reg[passed], marks[passed]
    bw, bh = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    points = torch.stack([bw[:, None] * marks[:, :5] + boxes[:, :1] - 1,
                          bh[:, None] * marks[:, 5:] + boxes[:, 1:2] - 1], dim=2)
    boxes = bbreg(boxes, reg)
    keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], torch.zeros(len(boxes)), 0.7, "Min")
    boxes, points = boxes[keep], points[keep]
    return boxes[:, :4].numpy(), boxes[:, 4].numpy(), points.numpy()


def consensus_squares(boxes: np.ndarray, candidates=CONSENSUS_CANDIDATES) -> np.ndarray:
    """(N * K, 4) candidate squares, K per box (face-major): each box's longer side (MTCNN squares its
    boxes the same way before R-Net and O-Net), moved and scaled as `candidates` say."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    moves = np.asarray(candidates, np.float64).reshape(-1, 3)                    # (K, 3): dx, dy, scale
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None]   # (N, 1)
    cx = (boxes[:, :1] + boxes[:, 2:3]) / 2 + moves[:, 0] * side                   # (N, K)
    cy = (boxes[:, 1:2] + boxes[:, 3:4]) / 2 + moves[:, 1] * side
    half = moves[:, 2] * side / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=-1).reshape(-1, 4)


def settle_boxes(onet, image: np.ndarray, boxes: np.ndarray, candidates=CONSENSUS_CANDIDATES):
    """Boxes (N, 4) and landmarks (N, 5, 2) that MTCNN's last stage agrees on around each of `boxes` in
    the RGB uint8 `image`: O-Net regresses every candidate square (`consensus_squares`) and the
    regressed boxes and landmarks are averaged per face.

    Why: MTCNN's box depends on which of its pyramid's windows happened to land on the face, so the
    same face framed a little differently (another canvas, another frame size) gets a box a few per
    cent of its side away, and the models' P(fake) moves with it. O-Net re-regressing one box is not a
    fixed point (docs/performance.md); the average of its regressions from several nearby squares
    moves 2.5-3x less (docs/training.md, session 9). Cut and
    resampled exactly as facenet-pytorch's third stage cuts R-Net's boxes (its `pad`, `imresample`,
    `bbreg`); only the cut regions are converted to float, not the whole frame."""
    from facenet_pytorch.models.utils.detect_face import bbreg, imresample, pad

    n, k = len(boxes), len(candidates)
    squares = torch.from_numpy(np.concatenate([consensus_squares(boxes, candidates), np.ones((n * k, 1))], 1)).float()
    h, w = image.shape[:2]
    y, ey, x, ex = pad(squares, w, h)
    cuts = torch.cat([imresample(torch.from_numpy(image[y[i] - 1:ey[i], x[i] - 1:ex[i]].astype(np.float32))
                                 .permute(2, 0, 1).unsqueeze(0), (48, 48)) for i in range(len(y))])
    regression, marks, _ = onet(((cuts - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last))
    bw, bh = squares[:, 2] - squares[:, 0] + 1, squares[:, 3] - squares[:, 1] + 1
    points = torch.stack([bw[:, None] * marks[:, :5] + squares[:, :1] - 1,
                          bh[:, None] * marks[:, 5:] + squares[:, 1:2] - 1], dim=2)
    regressed = bbreg(squares.clone(), regression)[:, :4]
    return (regressed.reshape(n, k, 4).mean(1).numpy().astype(np.float64),
            points.reshape(n, k, 5, 2).mean(1).numpy().astype(np.float64))


def settle_boxes_at_face_size(onet, image: np.ndarray, boxes: np.ndarray, face_px: int = SETTLE_FACE_PX,
                              rounds: int | None = None):
    """`settle_boxes` for each face on a patch of the full-resolution `image` around it (every
    consensus square inside it), resampled so that the face's side is `face_px` (area filter down,
    bicubic up): the box then depends neither on the size of the frame MTCNN searched nor on how
    many pixels the face has, and the cost per face stays bounded however large the photo. Repeated
    `rounds` times (default `SETTLE_ROUNDS`), each from the last round's boxes; the landmarks are the
    last round's."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    points = np.full((len(boxes), 5, 2), np.nan)      # no round, no landmarks
    for _ in range(SETTLE_ROUNDS if rounds is None else rounds):
        boxes, points = _settle_once_at_face_size(onet, image, boxes, face_px)
    return boxes, points


def _settle_once_at_face_size(onet, image: np.ndarray, boxes: np.ndarray, face_px: int):
    out_boxes, out_points = np.empty_like(boxes), np.empty((len(boxes), 5, 2))
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    h, w = image.shape[:2]
    for i, side in enumerate(sides):
        cx, cy, reach = (boxes[i, 0] + boxes[i, 2]) / 2, (boxes[i, 1] + boxes[i, 3]) / 2, CONSENSUS_REACH * side
        x0, y0 = int(max(0, np.floor(cx - reach))), int(max(0, np.floor(cy - reach)))
        x1, y1 = int(min(w, np.ceil(cx + reach))), int(min(h, np.ceil(cy + reach)))
        patch = image[y0:y1, x0:x1]
        f = face_px / max(float(side), 1.0)
        size = (max(1, round(patch.shape[1] * f)), max(1, round(patch.shape[0] * f)))
        resampled = np.ascontiguousarray(cv2.resize(patch, size, interpolation=cv2.INTER_AREA if f < 1
                                                    else cv2.INTER_CUBIC))
        sx, sy = size[0] / patch.shape[1], size[1] / patch.shape[0]
        scale, offset = np.array([sx, sy, sx, sy]), np.array([x0, y0, x0, y0], np.float64)
        b, p = settle_boxes(onet, resampled, ((boxes[i] - offset) * scale)[None])
        out_boxes[i] = b[0] / scale + offset
        out_points[i] = p[0] / np.array([sx, sy]) + np.array([x0, y0])
    return out_boxes, out_points


@once
def get_face_detector() -> FaceDetector:
    """The process-wide detector (MTCNN is built once: it costs ~0.3 s)."""
    return FaceDetector()
