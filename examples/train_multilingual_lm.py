"""Rebuilds the multilingual tiny LM's corpus from Debian's manual pages and retrains the model.

Source: the manual pages Debian ships, rendered to plain text with groff. English: the Linux
man-pages project (packages ``manpages`` and ``manpages-dev``; licences per page, mostly the
"Linux-man-pages-copyleft" verbatim-copying licence, some GPL and BSD; see
/usr/share/doc/manpages/copyright). German, French, Spanish, Polish and Italian: the
manpages-l10n translations (packages ``manpages-de``, ``manpages-fr``, ``manpages-es``,
``manpages-pl``, ``manpages-it``; GPL-3+, see /usr/share/doc/manpages-de/copyright). Needs a
Debian machine with those packages and groff installed (as root:
``apt-get install -y groff-base manpages manpages-dev manpages-de manpages-fr manpages-es manpages-pl manpages-it``);
the build and the tests need none of it, they use what this script writes into the repository:

- ``examples/weights/multilingual_lm/``: the model (fp16 safetensors) and its tokenizer;
- ``examples/data/multilingual/<lang>.txt``: a held-out excerpt per language (about 8 KB);
- ``examples/data/multilingual/calibration.txt``: training text in the training mix.

Each language gets a training budget that halves down the list (512 KB of English to 16 KB
of Italian), so the model sees very different amounts of each. A page is held out in every
language or in none (chosen by a hash of its name); a line of 24 or more characters found
in a held-out excerpt is struck from the training text, and a line that occurs on three or
more pages of a language (translators' credits, the colophon) is dropped everywhere, and so
are table rows.

    python examples/train_multilingual_lm.py            # corpus, training, files
    python examples/train_multilingual_lm.py --corpus   # corpus and excerpts only

Training takes 600 steps of 16 x 128 tokens, as the tiny LM's recipe (about 2.7 passes over
the 460k training tokens): 1343 s measured on a shared two-core machine (load average about
9), after a few minutes of rendering pages.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.llm.train import byte_level_bpe, save_fp16, tiny_llama, train_causal_lm  # noqa: E402
from edgeprune.llm.workload import tokenize  # noqa: E402

DATA = ROOT / "examples" / "data" / "multilingual"
WEIGHTS = ROOT / "examples" / "weights" / "multilingual_lm"
# language -> (Debian packages, directory under /usr/share/man, training budget in characters)
LANGUAGES = {
    "en": (("manpages", "manpages-dev"), "", 512_000),
    "de": (("manpages-de",), "de", 256_000),
    "fr": (("manpages-fr",), "fr", 128_000),
    "es": (("manpages-es",), "es", 64_000),
    "pl": (("manpages-pl",), "pl", 32_000),
    "it": (("manpages-it",), "it", 16_000),
}
EXCERPT_CHARS = 8_000
CALIBRATION_CHARS = 64_000
HELDOUT_ONE_IN = 8
SHARED_LINE_CHARS = 24
BOILERPLATE_PAGES = 3
SEQ_LEN = 128
VOCAB = 1024
STEPS = 600


def pages(language: str) -> dict[str, Path]:
    """Returns the language's manual pages, page name (``ls.1``) to file, from its packages."""
    packages, subdir, _ = LANGUAGES[language]
    prefix = "/usr/share/man/" + (subdir + "/" if subdir else "") + "man"
    found: dict[str, Path] = {}
    for package in packages:
        listing = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True)
        if listing.returncode != 0:
            raise SystemExit(f"Debian package {package} is not installed: apt-get install -y {package}")
        for line in listing.stdout.splitlines():
            path = Path(line)
            if line.startswith(prefix) and line.endswith(".gz") and path.is_file() and not path.is_symlink():
                found[path.name[:-3]] = path
    return found


def render(page: Path) -> str:
    """Returns a manual page as plain text: paragraphs on one line, no header, footer or indent."""
    roff = gzip.decompress(page.read_bytes())
    if roff.lstrip().startswith(b".so "):  # a page that only includes another
        return ""
    out = subprocess.run(
        ["groff", "-k", "-t", "-Tutf8", "-mandoc", "-rHY=0", "-dAD=l", "-rLL=2000n", "-P-cbou"],
        input=roff, capture_output=True, check=False,
    ).stdout.decode("utf-8", errors="replace")
    lines = [line.strip() for line in out.splitlines()]
    body = [line for line in lines if line][1:-1]  # the first and last lines are the running heads
    # tables (columns set apart by runs of spaces, box rules) are glyph lists, not language
    return "\n".join(line for line in body if "\ufffd" not in line and "   " not in line and "\u2500" not in line)


def held_out(name: str) -> bool:
    """Returns whether the page is held out (in every language: the choice is by name only)."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % HELDOUT_ONE_IN == 0


def by_hash(names) -> list[str]:
    """Returns the names in a fixed order that does not follow the alphabet."""
    return sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())


def language_corpus(language: str) -> tuple[str, str]:
    """Returns (training text within the budget, held-out excerpt) for one language."""
    texts = {name: render(path) for name, path in pages(language).items()}
    texts = {name: text for name, text in texts.items() if text}
    seen = Counter(line for text in texts.values() for line in set(text.splitlines()) if len(line) >= SHARED_LINE_CHARS)
    boilerplate = {line for line, count in seen.items() if count >= BOILERPLATE_PAGES}

    def clean(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if line not in boilerplate)

    excerpt = ""
    for name in by_hash(n for n in texts if held_out(n)):
        excerpt += clean(texts[name]) + "\n\n"
        if len(excerpt) >= EXCERPT_CHARS:
            break
    excerpt = cut(excerpt, EXCERPT_CHARS)
    struck = {line for line in excerpt.splitlines() if len(line) >= SHARED_LINE_CHARS}
    train = ""
    for name in by_hash(n for n in texts if not held_out(n)):
        train += "\n".join(line for line in clean(texts[name]).splitlines() if line not in struck) + "\n\n"
        if len(train) >= LANGUAGES[language][2]:
            break
    return cut(train, LANGUAGES[language][2]), excerpt


def cut(text: str, chars: int) -> str:
    """Returns at most ``chars`` characters of the text, ending at a line break."""
    if len(text) <= chars:
        return text.strip() + "\n"
    return text[: text.rfind("\n", 0, chars)].strip() + "\n"


def corpus() -> tuple[dict[str, str], dict[str, str]]:
    """Returns (training text, held-out excerpt) per language."""
    train, heldout = {}, {}
    for language in LANGUAGES:
        train[language], heldout[language] = language_corpus(language)
        print(f"{language}: {len(train[language]):,} training characters, {len(heldout[language]):,} held out", flush=True)
    return train, heldout


def mixed(train: dict[str, str], seed: int) -> str:
    """Returns the training text of every language, in paragraphs shuffled together (seeded)."""
    paragraphs = [p for text in train.values() for p in text.split("\n\n") if p.strip()]
    order = torch.randperm(len(paragraphs), generator=torch.Generator().manual_seed(seed)).tolist()
    return "\n\n".join(paragraphs[i] for i in order) + "\n"


def build_model():
    """Returns an untrained LlamaForCausalLM of the multilingual tiny LM's shape."""
    return tiny_llama(VOCAB, hidden=128, ffn=256, heads=8, kv_heads=4)


def write_data(heldout: dict[str, str], text: str) -> None:
    """Writes the held-out excerpts and the calibration text into examples/data/multilingual/."""
    DATA.mkdir(parents=True, exist_ok=True)
    for language, excerpt in heldout.items():
        (DATA / f"{language}.txt").write_text(excerpt, encoding="utf-8")
    (DATA / "calibration.txt").write_text(cut(text, CALIBRATION_CHARS), encoding="utf-8")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="store_true", help="write the corpus files only, do not train")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, heldout = corpus()
    text = mixed(train, args.seed)
    write_data(heldout, text)
    if args.corpus:
        return
    torch.manual_seed(args.seed)
    tokenizer = byte_level_bpe(text, VOCAB)
    ids = tokenize(tokenizer, text)
    print(f"{len(ids):,} training tokens", flush=True)
    model = train_causal_lm(build_model(), ids, seq_len=SEQ_LEN, steps=args.steps, seed=args.seed, log=True)
    print(f"wrote {save_fp16(model, tokenizer, WEIGHTS)}")


if __name__ == "__main__":
    main()
