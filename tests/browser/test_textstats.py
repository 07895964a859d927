"""The browser example's work module computes what examples/browser/README.md says."""

from __future__ import annotations

from playwright.async_api import BrowserContext

from tests.browser.conftest import WebServer
from tests.browser.tabs import http_url

STATS = """async (texts) => {
  const { work } = await import("/pages/textstats.js");
  return texts.map((text) => work({ text }));
}"""


async def test_textstats_counts_graphemes_words_and_sentences(
        browser: BrowserContext, web_server: WebServer) -> None:
    """Words and sentences by Unicode's rules, grapheme clusters as characters, the
    README's example exactly, and a long text segmented in pieces gives whole counts."""
    server = await web_server()
    page = await browser.new_page()
    await page.goto(f"{http_url(server)}/pages/textstats.js")
    headline = "Uber\u2019s Lesson: Silicon Valley\u2019s Start-Up Machine Needs Fixing"
    long_text = "One sentence here. Another one follows! " * 5000  # 200 KB
    mixed = "\U0001f44d\U0001f3fd caf\u00e9 \u65e5\u672c\u8a9e\u3067\u3059\u3002"  # 14 code points
    plain, emoji, readme, long = await page.evaluate(
        STATS, ["Hello there. How are you?", mixed, headline, long_text])
    assert (plain["words"], plain["sentences"], plain["characters"]) == (5, 2, 25)
    assert (emoji["characters"], emoji["sentences"]) == (13, 1)  # a thumb and its skin tone: one
    assert readme == {
        "characters": 61, "letters": 50, "words": 9, "uniqueWords": 9, "sentences": 1,
        "averageWordLength": 5.56, "wordsPerSentence": 9, "syllables": 16, "readingEase": 47.3,
        "topWords": [["fixing", 1], ["lesson", 1], ["machine", 1], ["needs", 1], ["silicon", 1]]}
    assert (long["words"], long["sentences"], long["characters"]) == (30000, 10000, len(long_text))
    assert long["topWords"] == [["another", 5000], ["follows", 5000], ["here", 5000],
                                ["sentence", 5000]]  # ties in alphabetical order; "one" is common
