"""Texts whose activations set the int8 variant's fixed quantization ranges.

Varied on purpose (length, domain, casing, punctuation, numbers, code, other languages) so the
ranges cover what a server sees. Kept apart from the validation texts, which judge the result.
"""

CALIBRATION_TEXTS: tuple[str, ...] = (
    "Hello.",
    "Thanks!",
    "What time is it?",
    "The cat sat on the mat.",
    "She sells sea shells by the sea shore.",
    "I deposited my paycheck at the bank before lunch.",
    "We had a picnic on the grassy bank of the stream.",
    "The pilot had to bank the plane sharply to the left.",
    "Apple released a new phone, but I prefer eating an apple a day.",
    "He can't believe it's already December; where did the year go?",
    "Please RSVP by Friday, 5 May 2023 (no later than 17:00 CET).",
    "The quick brown fox jumps over the lazy dog 3 times in 12.5 seconds.",
    "Quarterly revenue rose 14% to $2.3 billion, beating analysts' forecasts.",
    "Interest rates were left unchanged at 4.25% by the central bank on Thursday.",
    "The patient presented with acute chest pain radiating to the left arm.",
    "Take two tablets every 6 hours with water; do not exceed 8 tablets in 24 hours.",
    "Mitochondria are the membrane-bound organelles that generate most of the cell's ATP.",
    "The court ruled that the contract was void because one party lacked capacity.",
    "In 1969, Apollo 11 landed on the Moon and Neil Armstrong took the first steps.",
    "The Treaty of Westphalia (1648) ended the Thirty Years' War in Europe.",
    "Photosynthesis converts light energy, water and carbon dioxide into glucose and oxygen.",
    "Our striker scored twice in the second half and the team won 3-1 away from home.",
    "Preheat the oven to 180 °C, whisk the eggs with sugar, then fold in the flour.",
    "The hotel room was clean, but the Wi-Fi kept dropping every few minutes.",
    "I absolutely loved this movie!!! Best. Film. Ever.",
    "worst customer service ever, waited 2 hrs and nobody answered lol",
    "OMG did u see that?? cant believe it 😂😂",
    "Fast, lightweight HTTP client library for Python with async support.",
    "A command-line tool to convert Markdown files into static HTML websites.",
    "Utilities for parsing, validating and formatting international phone numbers.",
    "pip install numpy==1.26.4 && python -c 'import numpy; print(numpy.__version__)'",
    "def add(a: int, b: int) -> int: return a + b  # adds two integers",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name ORDER BY 2 DESC;",
    "Error: connection refused (errno 111) while connecting to 10.0.0.12:5432",
    "See https://example.com/docs/v2/getting-started#install for the details.",
    "Contact support@example.org or call +1 (555) 013-4567 between 9am and 5pm.",
    "NASA, the EU, UNESCO and the WHO signed the agreement in Geneva.",
    "Dr. Smith met Prof. Müller at 3 p.m. in St. Louis, Mo., on Jan. 4th.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Ich wohne in der Nähe der Bank, gleich neben dem Bahnhof.",
    "Le chat dort sur le canapé pendant que la pluie tombe dehors.",
    "La banque a refusé mon prêt malgré un dossier complet.",
    "El tren sale de Madrid a las ocho y llega a Sevilla al mediodía.",
    "Questo ristorante serve la migliore pizza napoletana della città.",
    "Het weer is vandaag erg wisselvallig met af en toe een bui.",
    "Москва — столица России и крупнейший город страны.",
    "東京は日本の首都であり、世界最大の都市圏の一つです。",
    "北京是中国的首都，也是一个历史悠久的城市。",
    "서울은 대한민국의 수도입니다.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "مرحبا بكم في موقعنا الإلكتروني",
    "The words antidisestablishmentarianism and pneumonoultramicroscopicsilicovolcanoconiosis "
    "are famously long.",
    "Supercalifragilisticexpialidocious, said Mary Poppins, unbelievably cheerfully.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the "
    "slings and arrows of outrageous fortune, or to take arms against a sea of troubles.",
    "Ladies and gentlemen, thank you for coming tonight; before we begin, please silence your "
    "phones, note the emergency exits on either side of the hall, and enjoy the performance.",
    "The committee, having reviewed the evidence submitted by both parties over the course of "
    "several months, concluded that further investigation was warranted before any decision "
    "could be made regarding the proposed merger of the two regional utilities.",
    "Transformers process all tokens of a sequence in parallel using self-attention, which lets "
    "each position attend to every other position; the cost grows quadratically with length, "
    "so long documents are usually split into overlapping windows of a few hundred tokens.",
    "In the morning we hiked up the ridge, crossed two streams, ate lunch by a quiet lake, and "
    "came back down through the pine forest just before the thunderstorm rolled in from the west.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20",
    "!!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}",
    "THIS SENTENCE IS WRITTEN ENTIRELY IN CAPITAL LETTERS FOR EMPHASIS.",
    "bank bank bank bank bank bank bank bank",
    "Q: Where is the nearest ATM? A: Two blocks north, next to the pharmacy.",
)
