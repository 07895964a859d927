"""The original Planchet README's example, ported: spaCy NER over news headlines.

Needs ``pip install spacy`` and ``python -m spacy download en_core_web_sm`` (tqdm is
optional). Start a server whose data dir holds ``data/news_headlines.jsonl``, e.g. from
the repo root:

    mkdir -p data && cp ../shared/data/news_headlines.jsonl data/
    planchet serve --data-dir .

then run as many of these as you like, in parallel:

    seq 0 7 | parallel python examples/spacy_ner.py {}

Unlike the original, errors raise a ``PlanchetError`` instead of returning ``None``,
and several copies may call ``start_job`` at once: the first creates the job, the
others resume it. ``examples/headline_entities.py`` is the same script with a
model-free stand-in for spaCy; the demo and the tests run that one.
"""

import spacy

from planchet import PlanchetClient

try:
    from tqdm import tqdm
except ImportError:  # tqdm only draws progress bars

    def tqdm(x):
        return x


nlp = spacy.load("en_core_web_sm")

PLANCHET_HOST = 'localhost'  # <--- CHANGE IF NEEDED
PLANCHET_PORT = 5005

url = f'http://{PLANCHET_HOST}:{PLANCHET_PORT}'
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
