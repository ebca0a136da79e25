"""Reading an answer's text: where it ends, and, for the robust mode, the forms a name is compared in.

Every mode cuts an answer at the model's end marker (cut_at_end_of_text, the published evaluators' rule).
The robust mode goes further: normalise (case, quotes, dashes, punctuation), strip_preambles ("It sounds
like a"), answer_candidates (both names of "Balaenoptera physalus: Fin Whale"), is_abstention and
count_class. Pure text: imports no other scoring module, and no numpy.
"""

from __future__ import annotations

import re
import unicodedata

END_OF_TEXT = "<|end_of_text|>"
END_TOKENS = (END_OF_TEXT, "<|eot_id|>", "<|end_of_turn|>")
_DASHES = re.compile(r"[-‐‑–—_]+")
_WHITESPACE = re.compile(r"\s+")
_DROPPED_CHARACTERS = str.maketrans("", "", "\"'`´‘’“”«»*#")
_SEPARATORS = re.compile(r"\s*(?:[:;()\[\]/\n]|,\s|\.\s|\s[-–—]\s|\s(?:also known as|aka|or|and)\s)\s*")
_PREAMBLES = [
    re.compile(pattern)
    for pattern in (
        r"^(?:the |its )?(?:common |scientific |taxonomic |vernacular |species |latin )?name (?:of|for) "
        r"(?:the |this )?(?:focal )?(?:species|animal|bird|mammal|sound|creature|organism)"
        r"(?: (?:in|of|from) (?:the |this )?(?:audio|recording|clip|sound))? (?:is|would be|could be)"
        r"(?: likely| probably| most likely)? ",
        r"^(?:the )?(?:focal )?(?:species|animal|bird)(?: (?:in|of) (?:the |this )?(?:audio|recording|clip))? "
        r"(?:is|appears to be|seems to be|sounds like|could be|might be)(?: likely| probably| most likely)? ",
        r"^(?:i think|i believe|based on the audio|in this audio|from the audio|i hear)(?: that)?(?: its)? ",
        r"^(?:this|it|that|the audio|the recording|the sound)(?: is| sounds like| appears to be| seems to be"
        r"| could be| might be| may be| contains| features)(?: likely| probably| most likely)? ",
        r"^(?:its|thats|sounds like|likely|probably|answer|species) ",
        r"^(?:the )?(?:sound|call|song|calls|songs|vocalization|vocalisation|audio|recording) (?:of|from|made by) ",
        r"^(?:but|so|and|yes|well) ",
        r"^(?:an?|the) ",
    )
]
_TRAILING_WORDS = re.compile(r"\s+(?:calls?|sounds?|songs?|vocali[sz]ations?|whistles?|clicks?|species)$")
_ABSTENTION = re.compile(
    r"^none\b"
    r"|\b(?:i (?:cannot|can not|cant|could not|couldnt|am unable|am not able|dont know|do not know|am not sure)"
    r"|im (?:not sure|unable|not able|sorry)|i am sorry|sorry|unfortunately"
    r"|(?:unable|not possible|impossible|difficult|hard) to (?:determine|identify|tell|say)"
    r"|(?:cannot|cant|could not|couldnt) (?:be )?(?:determined|identified|determine|identify|tell)"
    r"|no (?:audio|sound|species|animal|bird)s?(?: (?:is|are))? (?:present|detected|heard|provided|audible|mentioned)"
    r"|(?:there is|there are) no (?:audio|sound|focal|species|animal|bird|scientific|common)"
    r"|not (?:explicitly )?(?:mentioned|stated|specified|provided|identifiable)"
    r"|(?:doesnt|does not|didnt|did not) (?:provide|contain|mention|include|specify)"
    r"|not enough information|enough information|unknown|unidentified|as an ai|text based|more context)\b"
)
_COUNT_TOKENS = re.compile(
    r"\b(?:\d+|zero|one|two|three|four|five|six|seven|eight|nine|ten|more|multiple|several|many|single)\b"
)
_NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "single": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}


def cut_at_end_of_text(text: str) -> str:
    return text.split(END_OF_TEXT)[0]


def _cut_at_end_tokens(text: str) -> str:
    for token in END_TOKENS:
        text = text.split(token)[0]
    return text


def normalise(text: str) -> str:
    """Case, quotes, markdown, dashes, underscores and end punctuation removed; the form names are compared in."""
    text = unicodedata.normalize("NFKC", _cut_at_end_tokens(text)).casefold().translate(_DROPPED_CHARACTERS)
    text = _WHITESPACE.sub(" ", _DASHES.sub(" ", text))
    return text.strip(" \t.,;:!?")


def strip_preambles(text: str) -> str:
    """Remove known lead-ins ("The common name ... is", "It sounds like a", "The sound of a") and tails ("calls")."""
    previous = None
    while previous != text:
        previous = text
        for pattern in _PREAMBLES:
            text = pattern.sub("", text)
        text = _TRAILING_WORDS.sub("", text).strip()
    return text


def answer_candidates(answer: str) -> list[str]:
    """Strings an answer might name a class by: the whole answer, then its pieces in order of appearance.

    Pieces are cut at colons, parentheses, slashes, sentence ends, comma-space, " - ", "also known as",
    "or" and "and", so "Balaenoptera physalus: Fin Whale" and "Walrus (Odobenus rosmarus)" both yield
    their two names.
    """
    raw = unicodedata.normalize("NFKC", _cut_at_end_tokens(answer)).casefold().translate(_DROPPED_CHARACTERS)
    candidates: list[str] = []
    for piece in [raw, *_SEPARATORS.split(raw)]:
        cleaned = normalise(piece)
        for form in (cleaned, strip_preambles(cleaned)):
            if form and form not in candidates:
                candidates.append(form)
    return candidates


def is_abstention(answer: str) -> bool:
    """Empty, or a refusal ("I cannot determine", "I'm not sure", "no sound is present")."""
    text = normalise(answer)
    return not text or _ABSTENTION.search(text) is not None


def count_class(answer: str, one_label: str, more_label: str) -> str | None:
    """For One/More label sets: the first count word or number decides (0 or 1 -> One, 2+ -> More)."""
    match = _COUNT_TOKENS.search(normalise(answer))
    if match is None:
        return None
    token = match.group()
    if token in {"more", "multiple", "several", "many"}:
        return more_label
    count = int(token) if token.isdigit() else _NUMBER_WORDS[token]
    return one_label if count <= 1 else more_label
