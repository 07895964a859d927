"""The original Planchet README's example, ported: spaCy NER over news headlines.

Needs ``pip install spacy``, and for real NER ``python -m spacy download en_core_web_sm``
(tqdm is optional). Without that model it says so and uses a blank English pipeline
with a small EntityRuler (a few companies, people and places of the tech news), so it
runs wherever spaCy is installed; the tests run it that way. Start a server whose data
dir holds ``data/news_headlines.jsonl``, e.g. from the repo root:

    mkdir -p data && cp ../shared/data/news_headlines.jsonl data/
    planchet serve --data-dir .

then run as many of these as you like, in parallel:

    seq 0 7 | parallel python examples/spacy_ner.py {}

``$PLANCHET_URL`` overrides the server's URL (default http://localhost:5005).

Unlike the original, errors raise a ``PlanchetError`` instead of returning ``None``,
and several copies may call ``start_job`` at once: the first creates the job, the
others resume it. ``examples/headline_entities.py`` is the same script with a
model-free stand-in for spaCy; the demo runs that one.
"""

import os
import sys

import spacy

from planchet import PlanchetClient

try:
    from tqdm import tqdm
except ImportError:  # tqdm only draws progress bars

    def tqdm(x):
        return x


MODEL = "en_core_web_sm"
# what the blank pipeline knows: a few names that the tech headlines are full of
KNOWN = {
    "ORG": ["Apple", "Amazon", "Facebook", "Google", "Microsoft", "Twitter", "Uber", "Yahoo",
            "Tesla", "Snapchat", "Theranos", "Airbnb", "Intel", "IBM", "Netflix", "Lyft"],
    "PERSON": ["Donald Trump", "Trump", "Peter Thiel", "Tim Cook", "Elon Musk",
               "Mark Zuckerberg", "Jeff Bezos", "Marissa Mayer"],
    "LOC": ["Silicon Valley", "San Francisco", "New York", "China", "Europe", "India"],
}


def load_pipeline():
    """The model if it is installed, else a blank English pipeline with an EntityRuler."""
    try:
        return spacy.load(MODEL)
    except OSError:  # not downloaded
        print(f"{MODEL} is not installed: using a blank pipeline with a small EntityRuler "
              f"(python -m spacy download {MODEL} for the real thing)", file=sys.stderr)
        nlp = spacy.blank("en")
        ruler = nlp.add_pipe("entity_ruler")
        ruler.add_patterns([{"label": label, "pattern": name}
                            for label, names in KNOWN.items() for name in names])
        return nlp


nlp = load_pipeline()

PLANCHET_HOST = 'localhost'  # <--- CHANGE IF NEEDED
PLANCHET_PORT = 5005

url = os.environ.get('PLANCHET_URL', f'http://{PLANCHET_HOST}:{PLANCHET_PORT}')
client = PlanchetClient(url)

job_name = 'spacy-ner-job'
metadata = {  # NOTE: this assumes planchet has access to this path
    'input_file_path': './data/news_headlines.jsonl',
    'output_file_path': './data/entities.jsonl'
}

# make sure you don't use the clean_start option here
client.start_job(job_name, metadata, 'JsonlReader', writer_name='JsonlWriter')

# make sure the number of items is large enough to avoid blocking the server
n_items = 100
headlines = client.get(job_name, n_items)

while headlines:
    ents = []
    print('Processing headlines batch...')
    for id_, item in tqdm(headlines):
        item['ents'] = [ent.text for ent in nlp(item['text']).ents]
        ents.append((id_, item))
    client.send(job_name, ents)
    headlines = client.get(job_name, n_items)
