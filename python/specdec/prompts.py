"""Fixed prompt sets for the real-model drafter and benchmarks, written for this package (no dataset
download).

* ``training_prompts``: instructions built from :data:`TEMPLATES` x :data:`TRAIN_TOPICS`, the
  drafter's distillation domain (explain, describe, list, advise, tell a story).
* ``heldout_prompts``: the same templates on :data:`HELDOUT_TOPICS`, topics the drafter never saw.
* ``ood_prompts``: tasks outside that domain (code, arithmetic, dialogue formats, translation).
* ``repetition_prompts``: rewrite / extract from / continue a given passage (:data:`PASSAGES`), where
  much of the answer is copied from the prompt: prompt lookup's home ground.

Every list is deterministic (no randomness beyond a fixed seed), so a benchmark's prompts are the
same on every machine.
"""

from __future__ import annotations

import random

TEMPLATES = (
    "Explain {t} to a ten-year-old.",
    "Write a short paragraph about {t}.",
    "What are three interesting facts about {t}?",
    "Give me a brief history of {t}.",
    "Why is {t} important?",
    "Write a short story that involves {t}.",
    "List five things people often get wrong about {t}.",
    "Describe {t} in simple terms.",
    "What are the pros and cons of {t}?",
    "How would you introduce {t} to a beginner?",
    "Write a poem about {t}.",
    "Give some practical tips related to {t}.",
    "Summarize what everyone should know about {t}.",
    "Compare {t} with something similar and explain the differences.",
    "What questions do people usually ask about {t}? Answer two of them.",
    "Write an encouraging note to a student who is learning about {t}.",
)

TRAIN_TOPICS = (
    "the ocean",
    "volcanoes",
    "bread baking",
    "chess",
    "the moon",
    "honeybees",
    "trains",
    "jazz music",
    "recycling",
    "the Roman empire",
    "photosynthesis",
    "bicycles",
    "coffee",
    "glaciers",
    "owls",
    "the internet",
    "solar panels",
    "dinosaurs",
    "gardening",
    "the human heart",
    "rainbows",
    "ancient Egypt",
    "electric cars",
    "meditation",
    "sleep",
    "vaccines",
    "the water cycle",
    "earthquakes",
    "democracy",
    "black holes",
    "the printing press",
    "penguins",
    "tea ceremonies",
    "wind turbines",
    "libraries",
    "the Olympic Games",
    "rainforests",
    "deserts",
    "mountains",
    "friendship",
    "public speaking",
    "time management",
    "saving money",
    "learning a language",
    "cooking pasta",
    "the stock market",
    "bridges",
    "airplanes",
    "submarines",
    "lighthouses",
    "castles",
    "pirates",
    "the Silk Road",
    "the Renaissance",
    "Shakespeare",
    "classical music",
    "painting",
    "photography",
    "movies",
    "video games",
    "board games",
    "football",
    "swimming",
    "running",
    "yoga",
    "nutrition",
    "vitamins",
    "the immune system",
    "bacteria",
    "viruses",
    "DNA",
    "evolution",
    "fossils",
    "the solar system",
    "Mars",
    "comets",
    "telescopes",
    "gravity",
    "magnets",
    "electricity",
    "batteries",
    "computers",
    "robots",
    "artificial intelligence",
    "smartphones",
    "email",
    "passwords",
    "cloud storage",
    "3D printing",
    "the weather",
    "hurricanes",
    "climate change",
    "coral reefs",
    "whales",
    "elephants",
    "wolves",
    "cats",
    "dogs",
    "horses",
    "butterflies",
    "ants",
    "spiders",
    "mushrooms",
    "trees",
    "flowers",
    "cactus plants",
    "rice farming",
    "chocolate",
    "cheese making",
    "spices",
    "soup",
    "breakfast",
    "picnics",
    "camping",
    "hiking",
    "maps",
    "compasses",
    "the alphabet",
    "numbers",
    "clocks",
    "calendars",
    "money",
    "markets",
    "shops",
    "cities",
    "villages",
    "farms",
    "schools",
    "teachers",
    "homework",
    "exams",
    "universities",
    "museums",
    "zoos",
    "parks",
    "rivers",
    "lakes",
    "islands",
    "the Arctic",
    "Antarctica",
    "snow",
    "ice skating",
    "skiing",
    "kites",
    "balloons",
    "fireworks",
    "birthdays",
    "weddings",
    "holidays",
    "music festivals",
    "theater",
    "dance",
    "poetry",
    "novels",
    "fairy tales",
    "myths",
    "dragons",
    "knights",
    "kings and queens",
    "the Great Wall of China",
    "the pyramids",
    "Stonehenge",
    "the Eiffel Tower",
    "skyscrapers",
    "architecture",
    "furniture",
    "clothing",
    "fashion",
    "shoes",
    "knitting",
    "pottery",
    "glass",
    "paper",
    "ink",
    "pencils",
    "handwriting",
    "typewriters",
    "radio",
    "television",
    "newspapers",
    "journalism",
    "advertising",
    "marketing",
    "small businesses",
    "teamwork",
    "leadership",
    "kindness",
    "honesty",
    "patience",
    "curiosity",
    "creativity",
    "happiness",
    "stress",
    "exercise",
    "walking",
    "first aid",
    "hospitals",
    "doctors",
    "nurses",
    "firefighters",
    "police officers",
    "astronauts",
    "scientists",
    "inventors",
    "engineers",
    "farmers",
    "fishing",
    "boats",
    "sailing",
    "canals",
    "ports",
    "trucks",
    "roads",
    "traffic lights",
)

HELDOUT_TOPICS = (
    "octopuses",
    "the first powered flight",
    "sourdough starters",
    "origami",
    "hot air balloons",
    "beavers",
    "the metric system",
    "windmills",
    "tide pools",
    "the violin",
    "thunderstorms",
    "sea turtles",
    "the Amazon river",
    "coins",
    "seed banks",
    "the telephone",
    "volunteering",
    "the periodic table",
    "compost",
    "the Northern Lights",
    "marathons",
    "bamboo",
    "the Sahara",
    "paper airplanes",
    "crossword puzzles",
    "bookbinding",
    "solar eclipses",
    "greenhouses",
    "the piano",
    "maple syrup",
    "caves",
    "snowflakes",
)

#: Outside the distillation domain: code, arithmetic, structured formats, translation, dialogue.
OOD_PROMPTS = (
    "Write a Python function that returns the n-th Fibonacci number.",
    "Write a SQL query that counts the orders per customer in a table called orders.",
    "What is 17 times 23? Show your steps.",
    "Convert 3.5 kilometers to meters and explain the conversion.",
    "Translate to French: The cat is sleeping on the warm windowsill.",
    "Write a JSON object describing a book with a title, an author and a year.",
    "Write a bash command that lists all files larger than 10 megabytes in the current folder.",
    "Solve for x: 3x + 7 = 22.",
    "Write a haiku about a broken umbrella.",
    "Write a dialogue between a customer and a waiter in a restaurant.",
    "Write a regular expression that matches an email address and explain it.",
    "Write a JavaScript function that reverses a string.",
    "If a train travels 60 miles per hour for 2.5 hours, how far does it go?",
    "Write a limerick about a forgetful robot.",
    "Write an HTML page with a heading and a list of three fruits.",
    "Write a C function that computes the sum of an integer array.",
)

#: Passages for the repetition-heavy set (written for this package).
PASSAGES = (
    "The old harbor town of Westmere sits at the mouth of a narrow bay. Every morning the fishing "
    "boats leave before sunrise and return by noon, when the market opens on the stone quay. The "
    "town has one school, two bakeries, a small museum about shipwrecks and a lighthouse that has "
    "been automated since 1987. In summer, visitors come for the cliffs and the seabirds; in "
    "winter, storms close the bay for days at a time.",
    "To repot a houseplant, choose a pot one size larger than the old one, with a drainage hole. "
    "Water the plant a day before so the roots hold together. Tip the plant out gently, loosen the "
    "outer roots with your fingers, and set it in the new pot on a layer of fresh soil. Fill the "
    "sides with soil, press lightly, and water until it drains from the bottom. Keep the plant out "
    "of direct sun for a week while it settles.",
    "Maria Lopez founded the Riverside Reading Club in 2015 with six members. By 2020 the club had "
    "forty members and met every second Thursday at the public library. Its treasurer, Tom Baker, "
    "organized a book exchange that collected over two thousand books. In 2022 the club started a "
    "program with the local school, where members read to children on Saturday mornings.",
    "The water cycle moves water between the oceans, the air and the land. The sun heats the "
    "surface of the sea, and water evaporates into the air as vapor. The vapor rises, cools and "
    "condenses into clouds. When the droplets in the clouds grow heavy, they fall as rain or snow. "
    "Rivers and groundwater carry the water back to the sea, and the cycle begins again.",
    "Our office will move to the new building on Park Street on March 14. Please pack your desk "
    "items in the boxes provided by March 12 and label each box with your name and floor number. "
    "Computers and monitors will be moved by the IT team; do not pack them yourself. The new "
    "building opens at 8 a.m. on March 15, and parking passes can be collected at the front desk.",
    "A simple tomato soup needs six ripe tomatoes, one onion, two cloves of garlic, two cups of "
    "vegetable stock, a spoon of olive oil, salt and pepper. Chop the onion and garlic and cook "
    "them in the oil until soft. Add the chopped tomatoes and the stock, and simmer for twenty "
    "minutes. Blend the soup until smooth, season it with salt and pepper, and serve it hot.",
)

#: How each passage is used: (instruction before the passage, instruction after it).
PASSAGE_TASKS = (
    ("Repeat the following text exactly, word for word.", ""),
    (
        "Rewrite the following text, fixing nothing and keeping every sentence, but put each sentence "
        "on its own line.",
        "",
    ),
    ("Here is a text.", "Now write the same text again, but replace every number with the word NUMBER."),
    ("Read this passage.", "Quote the first three sentences of the passage."),
)


def chat(prompt: str) -> list[dict[str, str]]:
    """One user turn, the form every set is tokenized in (the target's chat template)."""
    return [{"role": "user", "content": prompt}]


def training_prompts(n: int | None = None, *, seed: int = 0) -> list[str]:
    """Templates x training topics, shuffled with ``seed``; the first ``n`` (all when None)."""
    out = [t.format(t=topic) for topic in TRAIN_TOPICS for t in TEMPLATES]
    random.Random(seed).shuffle(out)
    return out if n is None else out[:n]


def heldout_prompts(n: int | None = None) -> list[str]:
    """The templates on held-out topics, one template per topic in turn (deterministic)."""
    out = [TEMPLATES[i % len(TEMPLATES)].format(t=topic) for i, topic in enumerate(HELDOUT_TOPICS)]
    return out if n is None else out[:n]


def ood_prompts(n: int | None = None) -> list[str]:
    return list(OOD_PROMPTS) if n is None else list(OOD_PROMPTS[:n])


def repetition_prompts(n: int | None = None) -> list[str]:
    """Each passage with each task, interleaved so a short prefix covers every task."""
    out = []
    for i in range(len(PASSAGES) * len(PASSAGE_TASKS)):
        passage = PASSAGES[i % len(PASSAGES)]
        before, after = PASSAGE_TASKS[i % len(PASSAGE_TASKS)]
        out.append(f"{before}\n\n{passage}" + (f"\n\n{after}" if after else ""))
    return out if n is None else out[:n]


PROMPT_SETS = {
    "heldout": heldout_prompts,
    "ood": ood_prompts,
    "repetition": repetition_prompts,
}
