"""Generated samples for the `ifeval` and `tool_call` rows of bench/reward_service.py.

Each generator returns ``[(Sample, value), ...]``: distinct samples, the same for a
given seed, each with the value the verifier gives it under its default params, known
from how the sample was built (the bench counts any other answer as wrong).

- `ifeval_samples`: essays of a few hundred words (3-5 paragraphs of 3-5 sentences)
  with 2-5 instructions drawn from IFEval's 25 types, kwargs in IFEval's own shapes,
  about 60% of the instructions followed. Instructions that cannot share a response
  (JSON with anything structural, two responses with paragraph counts, upper with
  lower case...) are not drawn together. Counts the verifier compares (words,
  letters, capital words, sentences) get thresholds on the safe side of the built
  text's count; sentences, which the verifier splits by its own rules, get a margin
  around bounds known from construction.
- `tool_call_samples`: 1-3 expected calls over seven tools with JSON Schemas (the
  called ones and distractors, in ``metadata.tools``), the reference mostly in BFCL's
  possible_answer shape, the completion in one of the three text forms (OpenAI
  ``tool_calls`` JSON, Hermes ``<tool_call>`` tags, bare or fenced JSON); about half
  right, the rest wrong in one way (value, type, enum, missing argument, wrong name,
  extra or missing call, broken JSON, plain text); one in ten expects no call.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from referee.types import Sample

# --- ifeval ---------------------------------------------------------------------------

_TOPICS = ["urban gardening", "remote work", "public libraries", "electric bicycles",
           "ocean conservation", "board games", "home cooking", "solar energy", "local history",
           "mountain hiking", "night markets", "rail travel"]

# Plain prose: no quotes, asterisks, brackets, digits, all-capital words or abbreviations,
# none of the words below, so that only what a generator inserts moves a check.
_SENTENCES = [
    "Many people underestimate how much {t} shapes the rhythm of an ordinary week.",
    "When neighbours talk about {t}, they usually start with the practical questions.",
    "The first thing most beginners notice is that {t} takes patience, planning and luck.",
    "Over the past few years, interest in {t} has grown steadily across every age group.",
    "Some of the best advice comes from people who have been doing this quietly for decades.",
    "It is worth remembering that small habits, repeated often, matter more than grand plans.",
    "Local volunteers organise regular meetings where newcomers can ask questions freely.",
    "Costs vary widely, so it helps to set a modest budget before buying anything expensive.",
    "There is no single right way to begin, and that freedom is part of the appeal.",
    "Several readers wrote in to say that {t} changed how they spend their weekends.",
    "Why does {t} attract such a loyal following?",
    "Experts we interviewed agree that consistency beats intensity over the long run.",
    "Weather, time and money are the three constraints that come up in every conversation.",
    "On the other hand, the social side of {t} is often what keeps people involved.",
    "Children pick up the basics quickly, especially when adults let them experiment.",
    "Good tools help, but curiosity and a willingness to learn from mistakes help more.",
    "The council has promised to publish a short guide for residents later this year.",
    "Nobody expects perfection on the first attempt, and the community is forgiving.",
    "If you are unsure where to start, visit one of the open days and simply watch.",
    "Safety deserves a mention too, because a careless moment can spoil a lovely day.",
    "Looking ahead, the organisers hope to double the number of regular participants.",
    "What surprised us most was how generous experienced members are with their time!",
    "Each season brings its own challenges, from short days in winter to crowded summers.",
    "The library keeps a shelf of practical books on {t} that anyone can borrow.",
    "Shared equipment lowers the barrier for families who cannot buy everything at once.",
    "Newcomers often worry about looking foolish, yet most of them settle in quickly.",
    "In short, {t} rewards steady effort, good company and a sense of humour.",
    "Our own small experiment with {t} taught us more than any guidebook could.",
    "Even a few minutes a day adds up to real progress over a season.",
    "Several local businesses now sponsor events, which keeps the entry fees low.",
    "The mood at these gatherings is relaxed, friendly and surprisingly quiet.",
    "Critics argue that the hype will fade, but the numbers so far suggest otherwise.",
]
_KEYWORDS = ["zephyr", "quokka", "marmalade", "tapestry", "saffron", "origami", "nebula",
             "walrus", "kaleidoscope", "juniper", "obsidian", "lantern", "pelican", "tangerine"]
_KEYWORD_SENTENCES = ["We even heard a story about a {k} along the way.",
                      "One member brought a {k} to the last meeting.",
                      "Someone suggested naming the next event after a {k}."]
_UNUSED_WORDS = ["awesome", "basically", "literally", "gadget", "fantastic", "cheap", "stuff",
                 "amazing", "totally", "crazy"]
_PLACEHOLDER_SENTENCES = ["Please contact [organiser] before the first meeting.",
                          "Write to [name] at [address] to join the mailing list.",
                          "The next open day is on [date] at [location]."]
_BULLETS = ["- bring water and a snack", "- check the schedule first", "- ask for help early",
            "- keep simple notes", "- share what you learn", "- start small and stay curious"]
_CONNECTORS = ["Moreover", "Meanwhile", "Finally", "Overall", "Still", "Besides"]
_END_PHRASES = ["Is there anything else I can help with?", "Any other questions?",
                "Let me know if you have additional questions.", "Hope this helps!"]
_LANGUAGES = ["fr", "de", "es", "it", "pt", "ru", "ja"]
_SPLITTERS = ["SECTION", "Section", "PART", "Chapter"]
_CAP_TOKEN = re.compile(r"\w+(?:[-.]\w+)*")  # ifeval_text's capital-word tokens

IFEVAL_IDS = [
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words",
    "keywords:letter_frequency", "language:response_language",
    "length_constraints:number_sentences", "length_constraints:number_paragraphs",
    "length_constraints:number_words", "length_constraints:nth_paragraph_first_word",
    "detectable_content:postscript", "detectable_content:number_placeholders",
    "detectable_format:number_bullet_lists", "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "detectable_format:title", "combination:repeat_prompt",
    "combination:two_responses", "startend:end_checker", "startend:quotation",
    "change_case:capital_word_frequency", "change_case:english_capital",
    "change_case:english_lowercase", "punctuation:no_comma",
]
# What a JSON response can still be checked for; everything else conflicts with it.
_JSON_OK = {"keywords:existence", "keywords:frequency", "keywords:forbidden_words",
            "keywords:letter_frequency", "language:response_language",
            "length_constraints:number_sentences", "length_constraints:number_words",
            "change_case:capital_word_frequency", "change_case:english_capital",
            "change_case:english_lowercase", "detectable_format:json_format"}
_LAYOUT = ["length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word",
           "combination:two_responses", "detectable_format:json_format"]
_CONFLICTS = {
    frozenset(p) for p in [
        *((a, b) for a in _LAYOUT for b in _LAYOUT if a < b),
        *(("detectable_format:json_format", x) for x in IFEVAL_IDS if x not in _JSON_OK),
        ("combination:repeat_prompt", "startend:quotation"),
        ("change_case:english_capital", "change_case:english_lowercase"),
        ("change_case:english_capital", "detectable_format:constrained_response"),
        ("change_case:english_lowercase", "detectable_format:constrained_response"),
        ("change_case:english_capital", "detectable_format:multiple_sections"),
        ("change_case:english_lowercase", "detectable_format:multiple_sections"),
        ("detectable_format:multiple_sections", "length_constraints:nth_paragraph_first_word"),
    ]
}


def _pick_ids(rng: random.Random, must: tuple[str, ...]) -> list[str]:
    k = rng.randint(2, 5)
    ids = list(must)
    for iid in rng.sample(IFEVAL_IDS, len(IFEVAL_IDS)):
        if len(ids) >= k:
            break
        if iid not in ids and all(frozenset((iid, j)) not in _CONFLICTS for j in ids):
            ids.append(iid)
    rng.shuffle(ids)
    return ids


def _threshold(lo: int, hi: int, relation: str, followed: bool, rng: random.Random) -> int:
    """A threshold that `relation` holds for (`followed`) or fails for, for every count
    in lo..hi; rounded like a person would write it, on the safe side."""
    step = 10 if hi > 100 else 5 if hi > 30 else 1
    below = relation == "at least" if followed else relation == "less than"
    if below:  # thr <= lo: "at least thr" holds, "less than thr" fails
        return max(0, (lo - rng.randint(0, lo // 4)) // step * step)
    top = hi + 1 + rng.randint(0, hi // 4)  # thr > hi
    return -(-top // step) * step


def _wrap_word(sentence: str, rng: random.Random) -> str:
    """`sentence` with one inner word in markdown emphasis (never its first or last)."""
    toks = sentence.split(" ")
    inner = [i for i in range(1, len(toks) - 1) if toks[i].isalpha()]
    i = rng.choice(inner)
    mark = rng.choice(["*", "**"])
    toks[i] = f"{mark}{toks[i]}{mark}"
    return " ".join(toks)


def _render(par: list[Any]) -> str:
    out = ""
    for item in par:
        if isinstance(item, list):  # lines: a header, or a bullet block
            out += ("\n" if out else "") + "\n".join(item) + "\n"
        else:
            out += (" " if out and not out.endswith("\n") else "") + item
    return out


def ifeval_sample(i: int, rng: random.Random, must: tuple[str, ...] = ()) -> tuple[Sample, float]:
    ids = _pick_ids(rng, must)
    follow = {iid: rng.random() < 0.6 for iid in ids}
    kw: dict[str, dict[str, Any]] = {iid: {} for iid in ids}
    on = follow.__contains__
    topic = rng.choice(_TOPICS)
    request = f"Write a short piece about {topic} for the community newsletter"

    def fill(s: str) -> str:
        return s.format(t=topic)

    n_par = rng.randint(3, 5)
    if on("detectable_format:multiple_sections"):
        need = rng.randint(2, 4)
        kw["detectable_format:multiple_sections"] = {
            "section_spliter": rng.choice(_SPLITTERS), "num_sections": need}
        headers = need if follow["detectable_format:multiple_sections"] else need - 1
        n_par = max(n_par, need)
    pool = rng.sample(_SENTENCES, len(_SENTENCES))
    paras: list[list[Any]] = []
    for _ in range(n_par):
        take = rng.randint(3, 5)
        paras.append([fill(s) for s in pool[:take]])
        pool = pool[take:] or rng.sample(_SENTENCES, len(_SENTENCES))
    sentences = sum(len(p) for p in paras)
    words_a = sorted({w for p in paras for s in p for w in re.findall(r"\b[a-z]{5,}\b", s)})
    if on("punctuation:no_comma") and not follow["punctuation:no_comma"]:
        if not any("," in s for p in paras for s in p):
            paras[0][-1] = fill(_SENTENCES[26])

    def insert(sentence: str) -> None:  # never first in a paragraph (first words matter)
        p = rng.choice(paras)
        p.insert(rng.randint(1, len(p)), sentence)

    keywords = rng.sample(_KEYWORDS, 4)
    if on("keywords:existence"):
        chosen = keywords[: rng.randint(1, 3)]
        kw["keywords:existence"] = {"keywords": chosen}
        shown = chosen if follow["keywords:existence"] else chosen[: rng.randint(0, len(chosen) - 1)]
        for k in shown:
            insert(rng.choice(_KEYWORD_SENTENCES).format(k=k))
            sentences += 1
    if on("keywords:frequency"):
        k, times = keywords[3], rng.randint(1, 4)
        relation = rng.choice(["at least", "less than"])
        kw["keywords:frequency"] = {"keyword": k, "relation": relation, "frequency": _threshold(
            times, times, relation, follow["keywords:frequency"], rng)}
        for _ in range(times):
            insert(rng.choice(_KEYWORD_SENTENCES).format(k=k))
            sentences += 1
    if on("keywords:forbidden_words"):
        banned = rng.sample(_UNUSED_WORDS, rng.randint(1, 3))
        if not follow["keywords:forbidden_words"]:
            banned[rng.randrange(len(banned))] = rng.choice(words_a)
        kw["keywords:forbidden_words"] = {"forbidden_words": banned}
    if on("detectable_content:number_placeholders"):
        need = rng.randint(1, 4)
        kw["detectable_content:number_placeholders"] = {"num_placeholders": need}
        have = 0
        target = need + rng.randint(0, 1) if follow["detectable_content:number_placeholders"] else need - 1
        while have < target:
            s = rng.choice(_PLACEHOLDER_SENTENCES if target - have > 1 else _PLACEHOLDER_SENTENCES[:1])
            insert(s)
            sentences += 1
            have += s.count("[")
    if on("detectable_format:number_highlighted_sections"):
        need = rng.randint(1, 4)
        kw["detectable_format:number_highlighted_sections"] = {"num_highlights": need}
        m = need if follow["detectable_format:number_highlighted_sections"] else rng.randint(0, need - 1)
        spots = [(pi, si) for pi, p in enumerate(paras) for si in range(len(p))]
        for pi, si in rng.sample(spots, m):
            paras[pi][si] = _wrap_word(paras[pi][si], rng)
    if on("detectable_format:number_bullet_lists"):
        need = rng.randint(1, 5)
        kw["detectable_format:number_bullet_lists"] = {"num_bullets": need}
        m = need if follow["detectable_format:number_bullet_lists"] else need + rng.choice([-1, 1])
        if m:
            rng.choice(paras).insert(1, rng.sample(_BULLETS, m))
    if on("length_constraints:nth_paragraph_first_word"):
        prefixed = on("combination:repeat_prompt") or on("detectable_format:title")
        nth = rng.randint(2 if prefixed else 1, n_par)
        word, other = rng.sample(_CONNECTORS, 2)
        first = paras[nth - 1][0]
        paras[nth - 1][0] = f"{word}, {first[0].lower()}{first[1:]}"
        args = {"num_paragraphs": n_par, "nth_paragraph": nth, "first_word": word.lower()}
        if not follow["length_constraints:nth_paragraph_first_word"]:
            if rng.random() < 0.5:
                args["first_word"] = other.lower()
            else:
                args["num_paragraphs"] = n_par + 1
        kw["length_constraints:nth_paragraph_first_word"] = args
    if on("detectable_format:multiple_sections"):
        split = kw["detectable_format:multiple_sections"]["section_spliter"]
        for h in range(headers):
            paras[h].insert(0, [f"{split} {h + 1}"])
    extra = 0  # lines outside the prose, each adding at most two sentences

    if on("detectable_format:json_format"):
        obj = {"title": f"Notes on {topic}", "summary": _render(paras[0]),
               "details": [_render(p) for p in paras[1:]]}
        text = json.dumps(obj, indent=rng.choice([None, 2]))
        if rng.random() < 0.3:
            text = f"```json\n{text}\n```"
        if not follow["detectable_format:json_format"]:
            text = "Here is the summary in JSON format:\n" + text
        sentences -= n_par  # a sentence that ends a JSON string runs into the next
        extra += 1
    else:
        sep = "\n\n"
        if on("length_constraints:number_paragraphs"):
            sep = rng.choice(["\n***\n", "\n\n***\n\n"])
            kw["length_constraints:number_paragraphs"] = {"num_paragraphs": n_par if follow[
                "length_constraints:number_paragraphs"] else n_par + rng.choice([-1, 1])}
        text = sep.join(_render(p) for p in paras)
        head = []
        if on("combination:repeat_prompt"):
            kw["combination:repeat_prompt"] = {"prompt_to_repeat": request}
            head.append(request if follow["combination:repeat_prompt"]
                        else f"Here is a short piece about {topic}.")
        if on("detectable_format:title"):
            name = f"Notes on {topic.title()}"
            head.append(f"<<{name}>>" if follow["detectable_format:title"] else name)
        text = "\n".join([*head, text])
        extra += len(head)
        if on("combination:two_responses") and follow["combination:two_responses"]:
            other = rng.sample(_SENTENCES, rng.randint(3, 6))
            text += "\n******\n" + " ".join(fill(s) for s in other)
            sentences += len(other)
        tail = []
        if on("detectable_format:constrained_response"):
            tail.append(rng.choice(["My answer is yes.", "My answer is no.", "My answer is maybe."])
                        if follow["detectable_format:constrained_response"]
                        else "My answer is probably yes.")
        if on("detectable_content:postscript"):
            marker = rng.choice(["P.S.", "P.P.S"])
            kw["detectable_content:postscript"] = {"postscript_marker": marker}
            if follow["detectable_content:postscript"]:
                tail.append(f"{marker} Thank you for reading this far.")
            elif marker == "P.S." and rng.random() < 0.5:
                # Not the other way round: after "...group." the line "P.S." reads as
                # "p.\np.s", which IFEval's P.P.S pattern matches.
                tail.append("P.P.S Thank you for reading.")
        if on("startend:end_checker"):
            phrase, other = rng.sample(_END_PHRASES, 2)
            kw["startend:end_checker"] = {"end_phrase": phrase}
            tail.append(phrase if follow["startend:end_checker"] else other)
        text = "\n".join([text, *tail])
        extra += len(tail)

    if on("punctuation:no_comma") and follow["punctuation:no_comma"]:
        text = text.replace(",", "")
    if on("change_case:english_capital") and follow["change_case:english_capital"]:
        text = text.upper()
    if on("change_case:english_lowercase") and follow["change_case:english_lowercase"]:
        text = text.lower()
    if on("startend:quotation") and follow["startend:quotation"]:
        text = f'"{text}"'

    # Kwargs that compare counts of the finished text.
    if on("language:response_language"):
        lang = "en" if follow["language:response_language"] else rng.choice(_LANGUAGES)
        kw["language:response_language"] = {"language": lang}
    if on("keywords:letter_frequency"):
        letter, relation = rng.choice("aeinorstlcdhmpu"), rng.choice(["at least", "less than"])
        n = text.lower().count(letter)
        kw["keywords:letter_frequency"] = {"letter": letter, "let_relation": relation,
                                           "let_frequency": _threshold(n, n, relation, follow[
                                               "keywords:letter_frequency"], rng)}
    if on("length_constraints:number_words"):
        n, relation = len(re.findall(r"\w+", text)), rng.choice(["at least", "less than"])
        kw["length_constraints:number_words"] = {"relation": relation, "num_words": _threshold(
            n, n, relation, follow["length_constraints:number_words"], rng)}
    if on("length_constraints:number_sentences"):
        relation = rng.choice(["at least", "less than"])
        kw["length_constraints:number_sentences"] = {"relation": relation, "num_sentences": _threshold(
            sentences, sentences + 2 * extra + 2, relation,
            follow["length_constraints:number_sentences"], rng)}
    if on("change_case:capital_word_frequency"):
        n = sum(1 for t in _CAP_TOKEN.findall(text) if t.isupper())
        relation = rng.choice(["at least", "less than"])
        kw["change_case:capital_word_frequency"] = {"capital_relation": relation, "capital_frequency": _threshold(
            max(0, n - 1), n + 1, relation, follow["change_case:capital_word_frequency"], rng)}

    meta = {"key": i, "instruction_id_list": ids, "kwargs": [kw[iid] for iid in ids]}
    prompt = f"{request}. Sample {i}; instructions: {', '.join(ids)}."
    want = sum(follow.values()) / len(ids)
    return Sample(completion=text, id=f"i{i}", prompt=prompt, metadata=meta), want


def ifeval_samples(n: int, seed: int, start: int = 0,
                   must: tuple[str, ...] = ()) -> list[tuple[Sample, float]]:
    """`n` IFEval samples and the value `ifeval` (strict, instruction level) gives each;
    `must` names instructions every sample carries (the warm-up uses it to load
    langdetect's profiles in every worker)."""
    rng = random.Random(seed)
    return [ifeval_sample(i, rng, must) for i in range(start, start + n)]


# --- tool_call -------------------------------------------------------------------------

def _fn(name: str, description: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": required, "additionalProperties": False}}


_S, _I, _N, _B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
TOOLS = {t["name"]: t for t in [
    _fn("get_weather", "Current weather and forecast for a city",
        {"city": _S, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
         "days": {"type": "integer", "minimum": 1, "maximum": 14}}, ["city"]),
    _fn("search_flights", "Search flights between two airports on a date",
        {"origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
         "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
         "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
         "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
         "cabin": {"type": "string", "enum": ["economy", "premium", "business", "first"]}},
        ["origin", "destination", "date"]),
    _fn("convert_currency", "Convert an amount between currencies",
        {"amount": {"type": "number", "exclusiveMinimum": 0},
         "from_currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
         "to_currency": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        ["amount", "from_currency", "to_currency"]),
    _fn("create_event", "Create a calendar event",
        {"title": _S, "start": _S, "duration_minutes": {"type": "integer", "minimum": 5},
         "attendees": {"type": "array", "items": _S}, "reminder": _B},
        ["title", "start", "duration_minutes"]),
    _fn("get_stock_price", "Latest price of a stock",
        {"symbol": _S, "exchange": {"type": "string", "enum": ["NASDAQ", "NYSE", "LSE"]}},
        ["symbol"]),
    _fn("send_email", "Send an email",
        {"to": _S, "subject": _S, "body": _S, "cc": {"type": "array", "items": _S}},
        ["to", "subject", "body"]),
    _fn("translate_text", "Translate text into another language",
        {"text": _S, "target_language": _S, "formal": _B}, ["text", "target_language"]),
]}
_CITIES = [("Paris", "France"), ("Tokyo", "Japan"), ("Nairobi", "Kenya"), ("Lima", "Peru"),
           ("Oslo", "Norway"), ("Cairo", "Egypt"), ("Santiago", "Chile"), ("Toronto", "Canada")]
_AIRPORTS = ["JFK", "LHR", "CDG", "NRT", "SFO", "SIN", "DXB", "GRU"]
_CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD"]
_SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG"]
_PEOPLE = ["ana@example.com", "bo@example.com", "chen@example.com", "dev@example.com"]
_TITLES = ["Quarterly review", "Team lunch", "Design sync", "Dentist"]
_PHRASES = ["Where is the train station?", "Thank you for your help", "See you tomorrow"]
_LANGS = [("French", "fr"), ("German", "de"), ("Spanish", "es"), ("Japanese", "ja")]

# An argument: (name, acceptable values with "" marking it optional, value sent, a wrong one)
Arg = tuple[str, list[Any], Any, Any]


def _optional(rng: random.Random, name: str, value: Any, wrong: Any) -> list[Arg]:
    """An optional argument: stated in the request (must be `value`), defaulted ("" or
    `value`: sent or not), or left out."""
    r = rng.random()
    if r < 0.35:
        return [(name, [value], value, wrong)]
    if r < 0.6:
        return [(name, [value, ""], value if rng.random() < 0.5 else None, wrong)]
    return []


def _call_args(name: str, rng: random.Random, taken: set[Any]) -> list[Arg]:
    def fresh(pool: list[Any]) -> Any:
        v = rng.choice([p for p in pool if p not in taken])
        taken.add(v)
        return v

    if name == "get_weather":
        city, country = fresh(_CITIES)
        sent = rng.choice([city, city.lower(), f"{city}, {country}"])
        wrong = rng.choice([c for c, _ in _CITIES if c != city])
        unit = rng.choice(["celsius", "fahrenheit"])
        days = rng.randint(1, 7)
        return [("city", [city, f"{city}, {country}"], sent, wrong),
                *_optional(rng, "unit", unit, "fahrenheit" if unit == "celsius" else "celsius"),
                *_optional(rng, "days", days, days + 1)]
    if name == "search_flights":
        a, b = fresh(_AIRPORTS), fresh(_AIRPORTS)
        date = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        n = rng.randint(1, 4)
        cabin = rng.choice(["economy", "business"])
        return [("origin", [a], a, b), ("destination", [b], b, a),
                ("date", [date], date, date[:-2] + ("01" if date[-2:] != "01" else "02")),
                *_optional(rng, "passengers", n, n + 1),
                *_optional(rng, "cabin", cabin, "first")]
    if name == "convert_currency":
        x, y = rng.sample(_CURRENCIES, 2)
        amount = float(rng.choice([50, 120, 999, 2500])) + rng.choice([0.0, 0.5, 0.25])
        sent = int(amount) if amount.is_integer() and rng.random() < 0.5 else amount  # int for float
        return [("amount", [amount], sent, amount * 10), ("from_currency", [x], x, y),
                ("to_currency", [y], y, x)]
    if name == "create_event":
        title = fresh(_TITLES)
        start = f"2025-06-{rng.randint(10, 28)}T{rng.randint(8, 17):02d}:00"
        people = rng.sample(_PEOPLE, rng.randint(1, 3))
        minutes = rng.choice([15, 30, 45, 60])
        return [("title", [title], title, title + " (moved)"), ("start", [start], start, start[:-5] + "07:00"),
                ("duration_minutes", [minutes], minutes, minutes + 15),
                *_optional(rng, "attendees", people, people[:-1] + ["eve@example.com"]),
                *_optional(rng, "reminder", True, False)]
    if name == "get_stock_price":
        sym = fresh(_SYMBOLS)
        return [("symbol", [sym], sym, rng.choice([s for s in _SYMBOLS if s != sym])),
                *_optional(rng, "exchange", "NASDAQ", "NYSE")]
    if name == "send_email":
        to = fresh(_PEOPLE)
        return [("to", [to], to, rng.choice([p for p in _PEOPLE if p != to])),
                ("subject", ["Meeting notes"], "Meeting notes", "Lunch"),
                ("body", ["Notes from today are attached."], "Notes from today are attached.",
                 "See you soon."),
                *_optional(rng, "cc", ["team@example.com"], ["boss@example.com"])]
    phrase = fresh(_PHRASES)
    lang, code = rng.choice(_LANGS)
    return [("text", [phrase], phrase, phrase + " again"),
            ("target_language", [lang, code], rng.choice([lang, code, lang.lower()]), "Italian"),
            *_optional(rng, "formal", rng.random() < 0.5, None)]


def _sent(args: list[Arg]) -> dict[str, Any]:
    return {n: v for n, _, v, _ in args if v is not None}


def _render_calls(calls: list[tuple[str, dict[str, Any]]], form: str, broken: bool,
                  rng: random.Random) -> str:
    if form == "openai":
        items = [{"id": f"call_{j}", "type": "function",
                  "function": {"name": n, "arguments": json.dumps(a)}} for j, (n, a) in enumerate(calls)]
        if broken:  # arguments cut short: the JSON string inside is not JSON
            items[-1]["function"]["arguments"] = items[-1]["function"]["arguments"][:-1]
        msg: Any = {"role": "assistant", "content": None, "tool_calls": items}
        return json.dumps(msg if rng.random() < 0.5 else items)
    key = "parameters" if rng.random() < 0.2 else "arguments"
    objs = [json.dumps({"name": n, key: a}) for n, a in calls]
    if broken:
        objs[-1] = objs[-1][:-1]
    if form == "hermes":
        think = "<think>\nThe user asked for this; the tools cover it.\n</think>\n" if rng.random() < 0.4 else ""
        blocks = [f"<tool_call>\n{o}\n</tool_call>" for o in objs]
        if rng.random() < 0.2:  # the server stripped the stop string
            blocks[-1] = blocks[-1].removesuffix("\n</tool_call>")
        return think + "\n".join(blocks)
    body = objs[0] if len(objs) == 1 and rng.random() < 0.7 else "[" + ", ".join(objs) + "]"
    return f"Calling the tool now.\n```json\n{body}\n```" if rng.random() < 0.3 else body


_WRONG = ["value", "type", "enum", "missing", "name", "extra", "drop", "broken", "text"]


def tool_call_sample(i: int, rng: random.Random) -> tuple[Sample, float]:
    form = rng.choice(["openai", "hermes", "json"])
    right = rng.random() < 0.5
    taken: set[Any] = set()
    if rng.random() < 0.1:  # nothing to call: a plain answer is right, any call is wrong
        tools = rng.sample(sorted(TOOLS), 3)
        expected: list[tuple[str, list[Arg]]] = []
        reference = "[]"
        if right:
            completion = "The capital of Kenya is Nairobi; no tool is needed for that."
        else:
            name = tools[0]
            completion = _render_calls([(name, _sent(_call_args(name, rng, taken)))], form, False, rng)
    else:
        names = rng.sample(sorted(TOOLS), rng.randint(1, 3))
        if len(names) > 1 and rng.random() < 0.3 and names[0] in ("get_weather", "get_stock_price"):
            names[1] = names[0]  # the same tool twice, for two cities or symbols
        expected = [(n, _call_args(n, rng, taken)) for n in names]
        tools = sorted(set(names) | set(rng.sample(sorted(TOOLS), rng.randint(1, 3))))
        if rng.random() < 0.75:  # BFCL's possible_answer
            reference = json.dumps([{n: {a: alts for a, alts, _, _ in args}} for n, args in expected])
        else:  # one answer: exactly the arguments sent
            reference = json.dumps([{"name": n, "arguments": _sent(args)} for n, args in expected])
        calls = [(n, _sent(args)) for n, args in expected]
        kind = "right" if right else rng.choice(_WRONG)
        broken = kind == "broken"
        j = rng.randrange(len(calls))
        name, args = expected[j]
        if kind == "value":
            a, _, _, bad = rng.choice([x for x in args if x[2] is not None and x[3] is not None])
            calls[j][1][a] = bad
        elif kind == "type":
            a, _, v, _ = rng.choice([x for x in args if x[2] is not None])
            calls[j][1][a] = 7 if isinstance(v, str) else str(v)
        elif kind == "enum":
            enum_args = [a for a, p in TOOLS[name]["parameters"]["properties"].items() if "enum" in p]
            calls[j][1][enum_args[0] if enum_args else args[0][0]] = "unknown"
        elif kind == "missing":
            calls[j][1].pop(rng.choice(TOOLS[name]["parameters"]["required"]))
        elif kind == "name":
            calls[j] = (name.replace("_", "", 1), calls[j][1])
        elif kind == "extra":
            extra = rng.choice(sorted(TOOLS))
            calls.append((extra, _sent(_call_args(extra, rng, taken))))
        elif kind == "drop":
            calls.pop(j)
        if len(calls) > 1:
            rng.shuffle(calls)  # order does not matter by default
        completion = (_render_calls(calls, form, broken, rng) if calls and kind != "text"
                      else "I would need to look that up, but I am not sure which tool fits.")
    declared = [TOOLS[t] if rng.random() < 0.3 else {"type": "function", "function": TOOLS[t]}
                for t in tools]
    meta = {"tools": json.dumps(declared) if rng.random() < 0.2 else declared}
    wants = ", ".join(n for n, _ in expected) or "nothing"
    prompt = f"Request {i}: use the tools as needed ({wants})."
    return Sample(completion=completion, id=f"t{i}", prompt=prompt, reference=reference,
                  metadata=meta), 1.0 if right else 0.0


def tool_call_samples(n: int, seed: int, start: int = 0) -> list[tuple[Sample, float]]:
    """`n` tool-call samples and the value `tool_call` (default params) gives each."""
    rng = random.Random(seed)
    return [tool_call_sample(i, rng) for i in range(start, start + n)]
