"""Topic vocabularies for the synthetic MIND generator.

Real English words, so that pretrained text encoders (MiniLM, GloVe, an LLM) can read the planted
topic signal from titles and abstracts. Categories follow MIND's names; each subcategory has its
own words on top of the category's words.
"""

from __future__ import annotations

# category -> (category words, {subcategory: subcategory words})
TOPICS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "sports": (
        ("team", "coach", "season", "game", "win", "players", "league", "score", "fans", "match"),
        {
            "football_nfl": ("quarterback", "touchdown", "nfl", "linebacker", "yards", "kickoff", "playoff", "receiver"),
            "basketball_nba": ("nba", "dunk", "rebound", "court", "guard", "lakers", "assist", "threepointer"),
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
            "movies-celebrity": ("actress", "starring", "redcarpet", "biopic", "screenplay", "cameo", "stunt", "villain"),
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
            "viral": ("bodycam", "dashcam", "surveillance", "livestream", "drone", "eyewitness", "footage", "recording"),
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
