"""A tiny Llama-3-style tokenizer, built locally so tests and the offline demo never need the gated one.

It is a byte-level BPE with Llama-3's pre-tokenizer regex and its first sixteen special tokens in
Llama-3's order, so the real prompt path (header tokens, `<|eot_id|>`, the three stop ids) runs
unchanged: ids base+0 / base+1 / base+8 / base+9 play the parts of 128000 / 128001 / 128008 / 128009.
`[PAD]` is deliberately absent: the loader adds it, as upstream does for the real Llama folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|eot_id|>"
# Llama-3's special tokens 128000..128015, in order (the real vocab continues with 240 more reserved ones).
LLAMA3_SPECIAL_TOKENS = (
    BOS_TOKEN,
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    EOS_TOKEN,
    "<|python_tag|>",
    "<|reserved_special_token_3|>",
    "<|reserved_special_token_4|>",
    "<|reserved_special_token_5|>",
    "<|reserved_special_token_6|>",
    "<|reserved_special_token_7|>",
)
# What Llama-3.1-Instruct's generation_config.json stops on: end_of_text, eom_id, eot_id.
STOP_TOKENS = ("<|end_of_text|>", "<|eom_id|>", EOS_TOKEN)
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_VOCAB_SIZE = 512
MODEL_MAX_LENGTH = 131072

# The merges are learnt from this text, so the tiny vocabulary has pieces of the words the app shows.
_TRAINING_TEXT = (
    "What is the common name for the focal species in the audio?",
    "Caption the audio, using the scientific name for any animal species.",
    "Caption the audio, using the common name for any animal species.",
    "What are the common names for the species in the audio, if any?",
    "Which of these, if any, is present in the audio recording? Explain why.",
    "Is there an animal vocalization in this recording? Answer yes or no.",
    "How many individuals are calling? What is the call type: song, call, alarm or begging?",
    "The recording contains a bird singing, a frog chorus, and insects buzzing in the background.",
    "American Robin, Turdus migratorius, sings a clear whistled song at dawn in the forest.",
    "Humpback Whale, Megaptera novaeangliae, produces long moans and songs under water.",
    "Spring Peeper, Pseudacris crucifer, calls with a high peep from wetlands at night.",
    "Bottlenose Dolphin, Tursiops truncatus, whistles and clicks while hunting fish.",
    "Eurasian Wren, Troglodytes troglodytes, has a loud trilling song for such a small bird.",
    "Common Chiffchaff, Phylloscopus collybita, repeats its name in a simple two-note song.",
    "Killer Whale, Orcinus orca, uses pulsed calls; bats use echolocation clicks above 20 kHz.",
    "Mosquitoes hum; crickets chirp; cicadas drone; the stream, the rain and the wind make noise.",
    "Species: Anas platyrhynchos (Mallard), Corvus corax (Common Raven), Strix aluco (Tawny Owl).",
    "Answer: none. There is no animal in this audio, only music, speech, traffic or silence.",
    "The 3 birds sang 12 times in 10 seconds; 0.5 s notes at 4000 Hz, 2 of them overlapping.",
)


def build_tiny_tokenizer(bpe_vocab_size: int = BPE_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on the fixed text above; the trainer is deterministic for fixed input."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT, trainer)
    tokenizer.add_special_tokens(list(LLAMA3_SPECIAL_TOKENS))
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # Llama-3 prepends BOS through its post-processor; callers that splice audio ask for no special tokens.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )


def write_tiny_tokenizer(folder: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """Save the tiny tokenizer as a transformers folder that AutoTokenizer.from_pretrained reads offline."""
    tokenizer = build_tiny_tokenizer()
    Path(folder).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return tokenizer
