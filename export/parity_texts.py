"""The text half of the parity gate: the committed set of texts, by category.

Every text goes through our runtime tokenizer and through transformers' fast tokenizer (ids and
masks must be identical), then through the text graph and PyTorch (<= 1e-6). The categories are
where tokenizers tend to differ: Unicode normalisation, scripts without spaces, emoji sequences,
bidirectional text, markup, whitespace and control characters, case mapping, and the lengths
around the 77-token window. Invisible characters are written as escapes so the set can be read.

This is data kept as a Python module rather than a .json file so that it ships in the wheel with
the `export` package (no package-data configuration needed). `length_cases()` builds the length
cases: CLIP's vocabulary has one token per word for the words of `ONE_TOKEN_WORDS`, so k words
give k + 2 tokens with the start- and end-of-text tokens (tests/export/test_text.py counts them).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_TOKENS = 77  # CLIP's text window, start- and end-of-text tokens included
# Each a single token of CLIP's vocabulary ("a photo of a cat" is [49406, 320, 1125, 539, 320, 2368, 49407]).
ONE_TOKEN_WORDS = ("a", "photo", "of", "a", "cat")

TEXTS: dict[str, tuple[str, ...]] = {
    "captions": (
        "a photo of a cat",
        "a photo of a dog",
        "A photo of a dog sleeping on a red sofa.",
        "two people riding bicycles along a river at sunset",
        "a close-up of a bee on a lavender flower",
        "an aerial view of a city at night",
        "a bowl of ramen with a soft-boiled egg",
        "the Eiffel Tower in the rain",
        "a diagram of the human heart",
        "a black and white photograph of an old man",
        "a watercolor painting of mountains",
        "it's a dog's life",
        "don't look back; I'll be there, we've seen it, you're right, they'd know, I'm here",
        "3 apples, 12 oranges and 1,000,000 grapes",
        "pi is approximately 3.14159265358979",
        "the year 1999 vs. the year 2024",
        "price: $19.99 (or €18,50 / £15.00 / ¥2000)",
        "email me at someone@example.com",
        "https://example.com/path?query=a+b&x=1#frag",
        "C:\\Users\\photo\\IMG_0001.JPG",
        "def f(x): return x ** 2  # a python function",
        "SELECT * FROM images WHERE label = 'cat';",
        "x^2 + y^2 = z^2, ∑ᵢ aᵢ ≤ ∞, √2 ≈ 1.414, ∀x ∃y",
        "!!!???...,,,;;;:::---",
        "hello...world!!!",
        "“smart quotes” and ‘single ones’ — em dash – en dash … ellipsis",
        "#hashtag @mention $cashtag",
        "a",
        "cat",
        "!",
        "1",
        "supercalifragilisticexpialidocious",
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "antidisestablishmentarianism and floccinaucinihilipilification",
    ),
    "accents_and_combining_marks": (
        "café",
        "cafe\u0301",  # the same word, decomposed: e + COMBINING ACUTE ACCENT
        "naïve résumé",
        "nai\u0308ve re\u0301sume\u0301",
        "Crème brûlée à la française",
        "Ångström",
        "A\u030angstro\u0308m",
        "Æsir, Œuvre, Ðe, Þorn, ß",
        "São Paulo, Açaí, Curaçao",
        "Zürich, Köln, Österreich",
        "Dvořák, Čapek, Šťastný",
        "Łódź, Kraków, Gdańsk",
        "Ελληνικά: καλημέρα κόσμε",
        "Русский текст: привет, мир",
        "Ёлка и ёж",
        "Việt Nam: Tiếng Việt có dấu",
        "Ti\u00ea\u0301ng Vie\u0323\u0302t",  # stacked combining marks, in non-canonical order
        "e\u0301\u0301\u0301\u0301\u0301 many acutes on one letter",
        "Z\u0351\u0364\u0346a\u0357\u0350l\u0346g\u0303o\u0350 text",
        "ﬁ ﬂ ﬀ ligatures",
        "\u212b (ANGSTROM SIGN) and \u2126 (OHM SIGN)",
        "x\u0327\u0328 cedilla and ogonek on x",
        "ḍ ṭ ṇ ś ṣ ā ī ū (IAST)",
        "Ǆ ǅ ǆ digraphs",
        "n\u0303 versus ñ",
        "\u0301 a combining mark with nothing before it",
        "Hindi: नमस्ते दुनिया",
        "Thai: สวัสดีชาวโลก",
        "Tamil: வணக்கம்",
        "Amharic: ሰላም ልዑል",
        "Georgian: გამარჯობა",
        "Armenian: Բարեւ",
    ),
    "cjk": (
        "一只猫的照片",
        "一隻貓的照片",
        "猫の写真",
        "ねこのしゃしん",
        "ネコノシャシン",
        "ｶﾀｶﾅ halfwidth katakana",
        "고양이 사진",
        "고양이의 사진입니다",
        "東京タワーと富士山",
        "漢字かな交じり文です。",
        "中文，标点：“引号”、（括号）！",
        "ＦＵＬＬＷＩＤＴＨ　ｌａｔｉｎ　１２３",
        "mixed 中文 and English words",
        "猫cat猫dog",
        "𠀀𠀁𠀂 CJK extension B",
        "〒100-0001 東京都千代田区",
        "㈱ ㌔ ㍻ ㋿ compatibility ideographs",
        "한국어와 日本語と中文",
        "ㄱㄴㄷ jamo 가나다",
        "一二三四五六七八九十",
    ),
    "emoji": (
        "🐱",
        "a photo of a 🐱",
        "🐶🐱🐭🐹🐰🦊🐻🐼",
        "👍",
        "👍🏻 👍🏼 👍🏽 👍🏾 👍🏿",
        "👨\u200d👩\u200d👧\u200d👦",  # family: ZWJ sequence
        "👩\u200d💻 woman technologist",
        "🏳\ufe0f\u200d🌈 rainbow flag",
        "🏴\u200d☠\ufe0f pirate flag",
        "🇫🇷 🇯🇵 🇺🇸 🇧🇷 flags",
        "🇫🇷🇯🇵🇺🇸",
        "1\ufe0f\u20e3 2\ufe0f\u20e3 #\ufe0f\u20e3 keycaps",
        "❤ ❤\ufe0f ❤\ufe0e variation selectors",
        "🧑🏽\u200d🚀 astronaut, medium skin tone",
        "😀😃😄😁😆😅😂🤣",
        "I ❤️ NY",
        "emoji at the end 🎉",
        "🎉 emoji at the start",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f Scotland (tag sequence)",
        "👁\u200d🗨 eye in speech bubble",
        "🫠🫡🫢 newer emoji",
        "☺ ☹ ☠ older symbols",
        "✅❌⚠️ℹ️",
        "🐈\u200d⬛ black cat",
    ),
    "right_to_left": (
        "صورة قطة",
        "مرحبا بالعالم",
        "اللغة العربية جميلة",
        "بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ",  # with harakat (combining marks)
        "שלום עולם",
        "תמונה של חתול",
        "שָׁלוֹם with niqqud",
        "فارسی: عکس یک گربه",
        "اردو: بلی کی تصویر",
        "a photo of a cat صورة قطة mixed",
        "English then עברית then English",
        "\u202eRIGHT-TO-LEFT OVERRIDE\u202c",
        "\u200fRLM mark\u200e LRM mark",
        "\u2067isolate\u2069 and \u2066another\u2069",
        "١٢٣٤٥ Arabic-Indic digits",
        "۱۲۳ Persian digits",
        "ﷺ ﷽ Arabic ligatures",
        "ܫܠܡܐ Syriac",
        "ހެލޯ Thaana",
        "ߊߌߍ N'Ko",
    ),
    "html_and_entities": (
        "&amp; &lt; &gt; &quot; &#39;",
        "Tom &amp; Jerry",
        "&lt;b&gt;bold&lt;/b&gt;",
        "<b>bold</b> and <i>italic</i>",
        '<a href="https://example.com">a link</a>',
        "<img src='cat.jpg' alt='a cat'/>",
        "caf&eacute; cr&egrave;me",
        "&#233; &#x00E9; numeric entities",
        "non&nbsp;breaking&nbsp;space entity",
        "&copy; 2024 &mdash; &hellip; &trade;",
        "<script>alert('x')</script>",
        "<!-- an html comment -->",
        "a%20photo%20of%20a%20cat",
        "&amp;amp;amp; double-escaped",
        "<p>paragraph</p><br/><hr>",
        "[b]bbcode[/b] and **markdown** and _underscores_",
        '{"json": [1, 2, 3], "key": null}',
        "<|endoftext|>",
        "<|startoftext|> a photo of a cat <|endoftext|> and more after it",
        "a photo <|endoftext|> of a cat",
        "<|ENDOFTEXT|> in capitals",
        "<|endoftext",
    ),
    "whitespace_and_control": (
        " ",
        "   ",
        "\t",
        "\n",
        "\r\n",
        "  leading and trailing spaces  ",
        "many     spaces     between     words",
        "tabs\tbetween\twords",
        "line one\nline two\nline three",
        "windows\r\nline\r\nendings",
        "old mac\rline endings",
        "\u00a0no-break\u00a0space",
        "zero\u200bwidth\u200bspace",
        "zero\u200cwidth\u200dnon-joiner and joiner",
        "word\u2060joiner",
        "\ufeffbyte order mark at the start",
        "ideographic\u3000space",
        "em\u2003space and thin\u2009space",
        "line\u2028separator and paragraph\u2029separator",
        "null\x00byte",
        "bell\x07and\x08backspace",
        "escape\x1b[31mcolour codes\x1b[0m",
        "delete\x7fcharacter",
        "c1\x85next line\x9fcontrol",
        "vertical\x0btab and form\x0cfeed",
        "unit\x1fseparator\x1erecord",
        "soft\u00adhyphen",
        "\ufffd replacement character \ufffd",
        "\ue000 private use \uf8ff",
        "noncharacter \ufdd0 and \uffff",
        "\t \n \r \u00a0 \u3000 ",
        "mixed \t\n\r\x0b\x0c whitespace run",
        "a\n\n\n\nb",
    ),
    "mixed_case": (
        "A PHOTO OF A CAT",
        "a Photo Of A Cat",
        "aPhOtO oF a CaT",
        "iPhone, eBay, YouTube, McDonald's",
        "CamelCaseWordsTogether",
        "snake_case_words_together",
        "IT'S A DOG'S LIFE",
        "DON'T, I'LL, WE'VE, YOU'RE, THEY'D, I'M",
        "İstanbul and ISTANBUL",  # İ lowercases to i + COMBINING DOT ABOVE
        "ıi Iİ dotless and dotted",
        "STRASSE and Straße and ẞ",
        "ΣΊΣΥΦΟΣ final sigma",
        "ὈΔΥΣΣΕΎΣ polytonic",
        "ǅungla titlecase digraph",
        "ＡＢＣ ａｂｃ fullwidth",
        "Ⓐⓑⓒ circled letters",
        "𝐁𝐨𝐥𝐝 𝑰𝒕𝒂𝒍𝒊𝒄 mathematical letters",
        "ⅠⅡⅢⅣ roman numerals",
        "ﬃ LIGATURE ﬃ",
        "ÀÉÎÕÜ ÇÑ uppercase accents",
        "ARMENIAN Ｗ և ligature",
        "Cherokee ᏣᎳᎩ and ꮳꮃꭹ",
    ),
}


@dataclass(frozen=True)
class ParityText:
    category: str
    text: str


def length_cases() -> tuple[str, ...]:
    """Texts around the 77-token window: k one-token words give k + 2 tokens."""

    def words(count: int) -> str:
        return " ".join(ONE_TOKEN_WORDS[i % len(ONE_TOKEN_WORDS)] for i in range(count))

    fitting = MAX_TOKENS - 2
    cases = [words(count) for count in (2, 10, 40, fitting - 1, fitting, fitting + 1, fitting + 2)]
    cases += [
        words(300),  # far over: loses its last words, keeps start- and end-of-text
        " ".join(["a"] * fitting),
        " ".join(["a"] * (fitting + 1)),
        "cat" * 400,  # one very long word: BPE of a single 1,200-character word
        "x" * 5000,
        "🐱" * 100,  # many byte-level tokens from few characters
        "一只猫" * 60,
        "(" * 200,  # one long punctuation run
        "word " * 76 + "ending that is cut off",
    ]
    return tuple(cases)


def parity_texts() -> list[ParityText]:
    """The gate's set: the committed texts by category, the empty string, then the length cases."""
    texts = [ParityText(category, text) for category, items in TEXTS.items() for text in items]
    texts.append(ParityText("empty", ""))
    texts += [ParityText("length", text) for text in length_cases()]
    return texts
