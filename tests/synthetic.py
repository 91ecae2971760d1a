"""The synthetic sentiment task of the tests (and of benchmarks/gpu_check.py): a word vocabulary, reviews whose
label two sentiment words carry, and a word-level tokenizer for tiny encoders and causal LMs. Plain Python (no
pytest), so a benchmark can import it too."""

from __future__ import annotations

import random

POSITIVE = ["great", "wonderful", "fun", "moving", "brilliant", "charming", "superb", "delightful"]
NEGATIVE = ["dull", "awful", "boring", "tedious", "clumsy", "bland", "painful", "lifeless"]
FILLER = ["the", "film", "movie", "story", "was", "is", "really", "quite", "and", "plot", "acting", "a"]
PROMPT_WORDS = ["Review:", "Sentiment?", "Answer:", "positive", "negative", "N/A", "[MASK]"]


def make_texts(n: int, seed: int = 0, filler: int = 4) -> list[tuple[str, str]]:
    """``n`` distinct reviews: ``filler`` filler words and two sentiment words of the label, shuffled."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        label = rng.choice(["positive", "negative"])
        words = rng.sample(FILLER, filler) + rng.sample(POSITIVE if label == "positive" else NEGATIVE, 2)
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    return rows


def word_tokenizer(kind: str, extra_words: tuple[str, ...] = ()):
    """A word-level tokenizer over the vocabulary: [CLS] text [SEP] for an ``encoder``, [BOS] text otherwise."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]"]
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + PROMPT_WORDS)) + [w for w in extra_words if w not in PROMPT_WORDS]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", vocab["[BOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")
