"""The miniature lab's task: procedurally drawn scenes with templated captions and questions.

A scene is 1-3 shapes (circle, square, triangle; six colours; big or small) in distinct cells of a
3x3 grid, drawn on a 36x36 image: each 12x12 cell is exactly one patch of the tiny CLIP tower, so
the vision task is learnable in minutes. Every prompt asks about the image, and every answer
mixes predictable language ("a ... at the ...") with content only the image tells ("red",
"top left", "two"): a text-only drafter can guess the grammar, an image-aware one more.

Everything is deterministic by seed (numpy's PCG64), rendered with pillow, and tokenised with a
fixed word-level vocabulary (:data:`VOCAB`): no tokenizer files, no downloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

IMAGE_SIZE = 36
GRID = 3
CELL = IMAGE_SIZE // GRID
#: Image tokens per prompt: one per 12x12 patch (the CLS token is dropped, as llava-hf does).
NUM_IMAGE_TOKENS = GRID * GRID

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "white": (240, 240, 240),
    "purple": (150, 60, 200),
}
SIZES = ("big", "small")
#: Cell (row, col) -> words after "at the" (raster order).
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
NUMBERS = ("zero", "one", "two", "three")

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<image>", "<sep>")
_WORDS = (
    "a", "the", "is", "are", "there", "at", "and", "no", "yes", "not", ",", ".", "?",
    "describe", "image", "how", "many", "shapes", "shape", "what", "colour", "where", "of", "size",
    "top", "bottom", "left", "right", "center", "zero", "one", "two", "three",
    "circle", "square", "triangle", "circles", "squares", "triangles",
    *COLOURS, *SIZES,
)  # fmt: skip
#: The word-level vocabulary: id = position. Padded to 64 entries (unused ids are never produced).
VOCAB: tuple[str, ...] = (
    SPECIALS + _WORDS + tuple(f"<unused{i}>" for i in range(64 - len(SPECIALS) - len(_WORDS)))
)
assert len(VOCAB) == 64 and len(set(VOCAB)) == 64
PAD_ID, BOS_ID, EOS_ID, UNK_ID, IMAGE_ID, SEP_ID = range(6)
_INDEX = {w: i for i, w in enumerate(VOCAB)}


class Tokenizer:
    """Word-level tokenizer over :data:`VOCAB` (whitespace-separated words; unknown words -> <unk>)."""

    vocab = VOCAB
    pad_token_id, bos_token_id, eos_token_id, unk_token_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
    image_token_id, sep_token_id = IMAGE_ID, SEP_ID

    def encode(self, text: str) -> list[int]:
        return [_INDEX.get(w, UNK_ID) for w in text.split()]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        words = [VOCAB[int(i)] for i in ids if 0 <= int(i) < len(VOCAB)]
        if skip_special:
            words = [w for w in words if w not in SPECIALS]
        return " ".join(words)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, raster order

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} at the {self.position}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]  # sorted by cell

    def describe(self) -> str:
        """The caption: every object in raster order, 'a big red circle at the top left , ... and ... .'"""
        parts = [o.phrase() for o in self.objects]
        text = parts[0] if len(parts) == 1 else " , ".join(parts[:-1]) + " and " + parts[-1]
        return text + " ."


@dataclass(frozen=True)
class Example:
    """One prompt about one scene: ``question`` and its ``answer`` (both plain text)."""

    scene: Scene
    question: str
    answer: str


def sample_scene(rng: np.random.Generator) -> Scene:
    n = int(rng.integers(1, 4))
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=n, replace=False))
    objs = tuple(
        Obj(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=tuple(COLOURS)[int(rng.integers(len(COLOURS)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            cell=c,
        )
        for c in cells
    )
    return Scene(objs)


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _count_answer(n: int, noun: str) -> str:
    if n == 0:
        return f"there are no {noun}s ."
    verb = "is" if n == 1 else "are"
    return f"there {verb} {NUMBERS[n]} {_plural(noun, n)} ."


def sample_example(rng: np.random.Generator, scene: Scene | None = None, task: str | None = None) -> Example:
    """A question about a scene; ``task`` one of :data:`TASKS` (drawn uniformly when None)."""
    scene = sample_scene(rng) if scene is None else scene
    task = TASKS[int(rng.integers(len(TASKS)))] if task is None else task
    objs = scene.objects
    o = objs[int(rng.integers(len(objs)))]
    if task == "describe":
        return Example(scene, "describe the image .", scene.describe())
    if task == "count":
        return Example(scene, "how many shapes are there ?", _count_answer(len(objs), "shape"))
    if task == "count_shape":
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        return Example(
            scene, f"how many {shape}s are there ?", _count_answer(sum(x.shape == shape for x in objs), shape)
        )
    if task == "colour":
        return Example(scene, f"what colour is the shape at the {o.position} ?",
                       f"the {o.shape} at the {o.position} is {o.colour} .")  # fmt: skip
    if task == "where":
        return Example(scene, f"where is the {o.colour} {o.shape} ?",
                       f"the {o.colour} {o.shape} is at the {o.position} .")  # fmt: skip
    if task == "exists":
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = tuple(COLOURS)[int(rng.integers(len(COLOURS)))]
        hits = [x for x in objs if x.shape == shape and x.colour == colour]
        if hits:
            return Example(scene, f"is there a {colour} {shape} ?",
                           f"yes , there is a {colour} {shape} at the {hits[0].position} .")  # fmt: skip
        return Example(scene, f"is there a {colour} {shape} ?", f"no , there is not a {colour} {shape} .")
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def task_of(example: Example) -> str:
    """The task an example's question belongs to (one of :data:`TASKS`)."""
    q = example.question
    if q.startswith("describe"):
        return "describe"
    if q == "how many shapes are there ?":
        return "count"
    if q.startswith("how many"):
        return "count_shape"
    if q.startswith("what colour"):
        return "colour"
    if q.startswith("where"):
        return "where"
    return "exists"


#: Question types. "describe" gives the long answers speculative decoding profits from most.
TASKS = ("describe", "count", "count_shape", "colour", "where", "exists")


def render(scene: Scene) -> np.ndarray:
    """uint8 [IMAGE_SIZE, IMAGE_SIZE, 3]: the shapes on a dark grey background."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (30, 30, 30))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        r, c = divmod(o.cell, GRID)
        cx, cy = c * CELL + CELL / 2 - 0.5, r * CELL + CELL / 2 - 0.5
        h = 5 if o.size == "big" else 2.5
        col = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=col)
        elif o.shape == "square":
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=col)
        else:
            draw.polygon(((cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)), fill=col)
    return np.asarray(img, dtype=np.uint8).copy()


def pixel_values(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """float32 [B, 3, H, W] in [-1, 1] (mean 0.5, std 0.5 per channel) from uint8 HWC images."""
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) or images.ndim == 3 else images
    if arr.ndim == 3:
        arr = arr[None]
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


_TOKENIZER = Tokenizer()


def prompt_ids(question: str) -> list[int]:
    """Target prompt: <s> <image>*9 question <sep> (the answer follows, then </s>)."""
    return [BOS_ID] + [IMAGE_ID] * NUM_IMAGE_TOKENS + _TOKENIZER.encode(question) + [SEP_ID]


def answer_ids(answer: str) -> list[int]:
    return _TOKENIZER.encode(answer) + [EOS_ID]


def examples(seed: int, n: int, *, tasks: Sequence[str] | None = None) -> list[Example]:
    """``n`` examples drawn from ``np.random.default_rng(seed)`` (same seed, same list)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for t in tasks or ():
        if t not in TASKS:
            raise ValueError(f"tasks: unknown task {t!r} (known: {TASKS})")
    rng = np.random.default_rng(seed)
    pool = tuple(tasks) if tasks else TASKS
    return [sample_example(rng, task=pool[int(rng.integers(len(pool)))]) for _ in range(n)]


def batch(exs: Sequence[Example], *, with_answer: bool = True) -> dict[str, torch.Tensor]:
    """Right-padded training batch: input_ids, attention_mask, labels (-100 outside the answer),
    pixel_values. ``labels`` marks the answer tokens and </s>, the only ones trained on."""
    rows, labels = [], []
    for e in exs:
        p = prompt_ids(e.question)
        a = answer_ids(e.answer) if with_answer else []
        rows.append(p + a)
        labels.append([-100] * len(p) + a)
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
    lab = torch.full((len(rows), T), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(r)] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": lab,
        "pixel_values": pixel_values([render(e.scene) for e in exs]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m specdec.lab.scenes FILE.png``: draw a scene for ``specdec generate --target lab-target``
    and print what the lab target should answer about it."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m specdec.lab.scenes", description=main.__doc__.split("\n")[0])
    ap.add_argument("out", metavar="FILE.png", help="where to write the 36x36 image")
    ap.add_argument("--seed", type=int, default=0, help="which scene (default: 0)")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error(f"--seed must be >= 0, got {args.seed}")
    from PIL import Image

    scene = sample_scene(np.random.default_rng(args.seed))
    try:
        Image.fromarray(render(scene)).save(args.out)
    except (OSError, ValueError) as e:
        ap.error(f"cannot write {args.out!r}: {e}")
    print(f"wrote {args.out}: {len(scene.objects)} shape(s) on a 3x3 grid")
    print(f"ground truth for 'describe the image.': {scene.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
