"""A seeded practice data set of SMS-like ham and spam texts, in the SMS Spam Collection's format.

Every message is made up here from invented templates and word lists, never taken from the real
collection. The file keeps the real one's quirks: non-ASCII text, a few messages longer than
GPT-2's context, and one message that opens a double quote and never closes it, which makes
`pandas.read_csv` run it over the two lines that follow.
"""

import random
import re
from collections.abc import Callable
from pathlib import Path

from gptclassifier.files import cache_dir, write_atomically

PRACTICE_SEED = 123
PRACTICE_SIZE = 1850
SPAM_SHARE = 0.13
MIN_MESSAGES = 20
LONG_MESSAGE_CHARS = 5200  # about 1,300 GPT-2 tokens, more than its 1,024-token context


def _options(text: str) -> list[str]:
    """Split a `|`-separated list of words or templates."""
    return text.split("|")


WORDS = {
    "name": _options(
        "Amy|Ben|Chloé|Dan|Ellie|Finn|Grace|Hamid|Isla|Jack|Kofi|Lena|Marco|Nia|Olly|Priya|Raj|"
        "Sofía|Tom|Zoë|Jürgen|Mia|Nate|Dad|Mum|Gran"
    ),
    "place": _options(
        "the Red Lion|Luigi's|the library|the station|the Old Mill|Café Noé|the park|Rosa's|"
        "the bowling alley|uni|the gym|the market|the chippy|Sam's flat"
    ),
    "food": _options(
        "pizza|curry|tacos|pasta|fish n chips|noodles|sushi|a roast|pancakes|dumplings|"
        "crème brûlée|burritos|jalapeño poppers|lasagne"
    ),
    "grocery": _options(
        "milk|bread|eggs|bin bags|loo roll|bananas|coffee|butter|cat food|teabags|onions"
    ),
    "thing": _options(
        "umbrella|charger|jacket|keys|headphones|scarf|laptop|water bottle|wallet|bike lock"
    ),
    "day": _options(
        "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|2moro|tonight|the weekend|fri|sat"
    ),
    "street": _options("the high street|the ring road|Mill Lane|the bypass|Station Rd"),
    "emoji": _options("😊|🎉|😂|❤️|👍|🙈|🍕"),
    "prize": _options(
        "cash prize|holiday voucher|shopping spree|mystery gift|gift card|luxury hamper"
    ),
    "gadget": _options("camera phone|tablet|smartwatch|video phone|Bluetooth headset"),
    "network": _options("Orbitel|TeleStar|MobiNet|Fonix8"),
    "keyword": _options("WIN|CLAIM|PRIZE|TONE|GO|YES|CHAT|FREE"),
    "courier": _options("ParcelPost|SwiftDrop|QuickShip"),
    "resort": _options("Tenerife|Cancún|Ibiza|the Algarve|Mallorca"),
    "fee": _options("£1.99|£2.99|€1.45|£0.99"),
    "price": _options("£1.50/msg|150p/msg|£3/wk|£1/min|€2/min|25p/min|£4.50/week|50p per txt"),
    "amount": _options("£500|£1000|£2,000|£250|€1500|£5000|£100"),
    "domain": _options("prize-hub|claim-now|txt-win|parcel-track|secure-acct|tone-zone|lucky-draw"),
}

NUMBERS: dict[str, Callable[[random.Random], str]] = {
    "hour": lambda rng: str(rng.randint(1, 12)),
    "clock": lambda rng: f"{rng.randint(1, 12)}:{rng.choice(('00', '15', '30', '45'))}",
    "minutes": lambda rng: str(rng.choice((5, 10, 15, 20, 25, 30, 40))),
    "small": lambda rng: str(rng.randint(2, 9)),
    "inches": lambda rng: str(rng.choice((10, 12, 14, 16, 32, 55))),
    "digits": lambda rng: f"{rng.randrange(10000):04d}",
    "phone": lambda rng: f"0{rng.choice(('9061', '8707', '9050'))} 000{rng.randrange(1000):03d}",
    "shortcode": lambda rng: str(rng.randrange(80000, 90000)),
    "ref": lambda rng: f"{rng.choice('BCDFGHKLMPRTVXZ')}{rng.randrange(100, 1000)}",
    "url": lambda rng: f"{rng.choice(('www.', 'http://'))}{rng.choice(WORDS['domain'])}.example",
}

HAM_REPLIES = _options(
    "ok|Ok ta|k|kk|Okay x|Sure|yep|Yes!|nope|nah not 2nite|lol|LOL|haha|omw|On my way|"
    "see you at {hour}|See u at {clock}|Thanks|thx|ta|np|no worries|Love u|Night x|Morning!|"
    "Where r u?|Home?|{minutes} mins|Done 👍|Sounds good|Yeah go on then|Hmm maybe|Cool cool|👍|"
    "😊|Ha!|Good luck 2day!|Miss u|What?|Call me|brb|Hope ur ok|Sorry!!|Got it|Yes pls|In a bit|"
    "Outside|Leaving now|At {place}|ur so funny|{day}?|Ok {name}|Go on then {emoji}"
)

HAM_SENTENCES = [
    "Running {minutes} mins late, sorry!! Traffic on {street} is mental.",
    "r u free {day}? thinking {food} at {place}",
    "Can u pick up {grocery} on ur way back? We're out.",
    "{name} says dinner's at {hour}, don't be late this time.",
    "Just got to {place}, where r u",
    "I left my {thing} at urs I think, can u check the sofa",
    "Haha {name} that's the best thing I've heard all week.",
    "Did {name} ever reply about {day}?",
    "Meeting moved to {clock}, room {small}0{small}. Bring the slides.",
    "Happy birthday {name}!! Have an amazing day {emoji}",
    "Can't talk now, in a meeting. Call u after {hour}.",
    "Wat time does the film start {day}?",
    "Im so tired, the baby was up till {hour}.",
    "Don't forget ur {thing}, it's supposed to rain 2moro.",
    "The train's delayed again, {minutes} more mins apparently.",
    "Thx for {day}, had a gr8 time.",
    "{name} says hi btw.",
    "Pls tell me u saved me some {food}.",
    "Yeah I'm home now, text me when ur done at {place}.",
    "How did the interview go {name}??",
    "Ur mum called at {clock}, she wants u to ring her back.",
    "Lunch at {place}? I'm buying.",
    "My {thing} broke AGAIN, can I borrow urs {day}",
    "Just seen {name} at {place}, small world.",
    "Ok I'll bring the {food}, u sort drinks.",
    "Exam went ok i think, not sure about q{small} tho.",
    "Gym at {clock}? Or r we skipping again lol",
    "The wifi is down so I'm texting like it's 200{small}.",
    "Car's at the garage till {day}, can u give me a lift?",
    "Did u see the match last nite? {small}-{small}, unreal.",
    "Sorry missed ur call {name}, was in the shower.",
    "We need {grocery}, {grocery} and something for {name}'s lunchbox.",
    "Free {day} evening? {name} is doing a quiz at {place}.",
    "Call me after {hour} when u get this, nothing urgent.",
    "Did u win anything in the raffle? I got {small} tea towels lol",
    "Got the tickets! Row {small}, seats {small}{small} and {small}{small}.",
    "Bus is {minutes} mins away, see you at the stop.",
    "Can we do {clock} instead of {clock}?",
    "Thanks for the lift {day}, owe u one.",
    "Grabbing a coffee at the café, want anything? ☕",
    "Leaving work now, home in {minutes}.",
    "The dog ate {name}'s homework. Actually ate it.",
    "Is it {name}'s turn to host or ours?",
    "Sorry I was grumpy {name}, long day.",
    "U still up?",
    "Doctor says {name}'s ankle is just a sprain, phew.",
    "I'll be at {place} by the big clock.",
    "Parcel came for u from {courier}, I put it in the shed.",
    "Made {food} and there's loads left, come over.",
    "Which platform? I'm by the ticket machines, {minutes} mins till it goes.",
    "Tell {name} I said congrats on the new job!",
    "Ugh forgot my {thing}, r u home yet?",
    "Movie was sooo good, u have to see it {day}.",
    "Can u send me that photo from {day}",
    "Who took my charger?? 📱 on {small}%",
    "{name} wants everyone at hers on {day} for {food}.",
    "Heading to {place}, need anything?",
    "Its freezing at {place}, bring a jumper.",
    "Remind me to pay u back for the {food}.",
    "Do u know if the shop on {street} is open sundays",
    "That's hilarious {emoji}",
    "Booked a table for {small} at {clock}, under {name}.",
    "Flying back from Málaga at {clock}, the paella was unreal.",
    "Stuck at Zürich airport, flight delayed {small} hrs.",
    "Meet at the crêpe stall by the river at {clock}?",
    "Tickets are €{small}0 each, still up for it?",
    "Owe u £{small} for the cinema, will send it 2nite.",
    "“Be there in 5” he said… {minutes} mins ago.",
    "It’s fine {name}, honestly, don’t worry about it.",
    "{name} can’t make it {day}, shall we move it?",
]
HAM_SIGN_OFFS = [" lol", " xx", " x", " 😊", " :)", " :-)", " haha", " 😂", " 🙏", " {emoji}"]

# These open with a double quote; pandas reads the quoted part as a CSV field and drops the quotes.
QUOTED_HAM = [
    '"Running late" he says, for the third time this week. Start without us at {place}.',
    '"Five more minutes" she said, an hour ago. Still at {place} lol',
    '"Bring snacks" was the only rule and u brought {grocery}??',
    '"Back in 10" says the sign at {place}. Been waiting {minutes} mins.',
]
QUOTED_SPAM = '"You have been selected" - claim ur {amount} {prize} now, call {phone}. {price}'
# No closing quote: pandas reads on, over two lines, up to the inch mark of the line after next
# (no other template holds a straight double quote).
UNCLOSED_QUOTE_HAM = (
    "\"Hold on, phone's dying. Text me {name}'s address and I'll be there by {hour}"
)
INCH_MARK_HAM = [
    'Can u grab a {inches}" pizza from {place} on the way',
    'The new telly is {inches}" and it barely fits lol',
]

SPAM_HOOKS = [
    "URGENT! Your mobile number has been awarded a {amount} {prize}.",
    "Congratulations! You've been selected to receive a {amount} {prize}.",
    "FREE {gadget} upgrade for loyal {network} customers this week only!",
    "You have 1 unclaimed {prize} waiting for you.",
    "WINNER!! As a valued {network} customer you have won {amount} cash.",
    "Your parcel could not be delivered: a {fee} redelivery fee is due.",
    "Your account has been temporarily suspended due to unusual activity.",
    "Get the hottest ringtones 📱 sent straight to ur phone!",
    "Txt {keyword} now to enter our weekly draw for a {prize}!",
    "Last chance! Ur entry in the {amount} prize draw expires 2nite.",
    "Hey it's Jess 😊 I've been trying to reach u about ur FREE {prize}.",
    "Ur {network} bill is overdue. Avoid disconnection today.",
    "Lonely? 1000s of local singles are online now.",
    "Claim ur FREE {gadget} 🎉 with any new contract.",
    "Guaranteed {amount} cash or a {prize}!",
    "Ur mobile has won a trip to {resort}! ✈",
    "Quiz time! Answer 1 easy question to win a {prize}.",
    "This is a final notice regarding your {prize}.",
    "Your bank card ending {digits} has been locked.",
    "You are today's lucky winner of {amount} in vouchers 🎁.",
    "Double mins & texts for 12 months FREE when u upgrade.",
    "Get {small}0 polyphonic ringtones for just {price}!",
    "Important: your delivery from {courier} is on hold.",
    "Dear customer, a refund of {amount} is waiting for you.",
    "Free entry into our {amount} weekly competition!",
]
SPAM_ACTIONS = [
    "Call {phone} now to claim.",
    "To claim, call {phone} from a landline.",
    "Txt {keyword} to {shortcode} to claim.",
    "Reply YES to {shortcode} to claim.",
    "Visit {url} before midnight.",
    "Verify your details at {url} within 24 hrs.",
    "Claim code {ref}, call {phone}.",
    "Pay now at {url} to rebook.",
    "Text WIN to {shortcode} now!",
    "Just call {phone} quoting {ref}.",
    "Go to {url} and enter code {ref}.",
    "Send {keyword} to {shortcode} & start chatting.",
]
SPAM_FINE_PRINT = [
    "{price}",
    "T&Cs apply. 18+ only.",
    "Reply STOP to opt out.",
    "{price}. Txt STOP to end.",
    "Valid {small}2hrs only.",
    "PO Box {digits}, Fakeham FK{small} 0XX.",
    "Std network charges apply.",
    "Calls cost {price} from landlines, mobiles vary.",
    "Offer ends {day}.",
    "Subscription service, {price}, unsub: reply STOP.",
]
SPAM_TERMS = SPAM_FINE_PRINT + [
    "One entry per mobile number.",
    "Prizes are non-transferable and no cash alternative is offered.",
    "Winners are drawn at random from all valid entries.",
    "Promoter: {network} Ltd, PO Box {digits}.",
    "We may text u about other offers.",
    "Full terms at {url}.",
    "Max {small} msgs per week.",
]


def generate_practice_messages(
    seed: int = PRACTICE_SEED, num_messages: int = PRACTICE_SIZE
) -> list[tuple[str, str]]:
    """Return `num_messages` (label, text) pairs, 13% of them spam, the same for the same seed."""
    if num_messages < MIN_MESSAGES:
        raise ValueError(f"the practice data set needs at least {MIN_MESSAGES} messages")
    rng = random.Random(seed)
    labels = ["ham"] * num_messages
    for position in rng.sample(range(num_messages), round(SPAM_SHARE * num_messages)):
        labels[position] = "spam"
    texts = [_spam(rng) if label == "spam" else _ham(rng) for label in labels]
    _plant_quirks(rng, labels, texts)
    return list(zip(labels, texts, strict=True))


def practice_bytes(seed: int = PRACTICE_SEED, num_messages: int = PRACTICE_SIZE) -> bytes:
    """Return the practice file's content: one `label<TAB>text` line per message, UTF-8."""
    messages = generate_practice_messages(seed, num_messages)
    return "".join(f"{label}\t{text}\n" for label, text in messages).encode("utf-8")


def write_practice_file(
    path: Path | str, seed: int = PRACTICE_SEED, num_messages: int = PRACTICE_SIZE
) -> Path:
    """Write the practice file to `path` atomically and return the path."""
    path = Path(path)
    write_atomically(path, practice_bytes(seed, num_messages))
    return path


def practice_file() -> Path:
    """Return the cached default practice file, (re)writing it unless it is already up to date."""
    path = cache_dir() / "practice" / "practice-sms.tsv"
    expected = practice_bytes()
    if not path.is_file() or path.read_bytes() != expected:
        write_atomically(path, expected)
    return path


def _fill(rng: random.Random, template: str) -> str:
    """Replace each `{slot}` in `template` with a word or number drawn by `rng`."""
    return re.sub(r"\{(\w+)\}", lambda match: _draw(rng, match[1]), template)


def _draw(rng: random.Random, slot: str) -> str:
    """Draw one value for `slot`: a generated number or a word from its list."""
    return NUMBERS[slot](rng) if slot in NUMBERS else rng.choice(WORDS[slot])


def _ham(rng: random.Random) -> str:
    """Return an everyday text: a quick reply, or one to four casual sentences."""
    if rng.random() < 0.12:
        return _fill(rng, rng.choice(HAM_REPLIES))
    count = rng.choices((1, 2, 3, 4), weights=(50, 30, 14, 6))[0]
    text = " ".join(_fill(rng, rng.choice(HAM_SENTENCES)) for _ in range(count))
    if rng.random() < 0.25:
        text = text.lower()
    if rng.random() < 0.2:
        text += _fill(rng, rng.choice(HAM_SIGN_OFFS))
    return text


def _spam(rng: random.Random) -> str:
    """Return a spam text: a hook, often a call to action, and sometimes some fine print.

    Some spam is as short as a friend's text, so that length alone does not give it away.
    """
    parts = [rng.choice(SPAM_HOOKS)]
    if "{" not in parts[0] or rng.random() < 0.7:  # a hook without slots alone would repeat
        parts.append(rng.choice(SPAM_ACTIONS))
        if rng.random() < 0.6:
            parts.append(rng.choice(SPAM_FINE_PRINT))
    text = _fill(rng, " ".join(parts))
    return text.upper() if rng.random() < 0.1 else text


def _ramble(rng: random.Random, opening: str, templates: list[str]) -> str:
    """Return `opening` followed by filled templates until the text is longer than GPT-2 allows."""
    text = _fill(rng, opening)
    while len(text) < LONG_MESSAGE_CHARS:
        text += " " + _fill(rng, rng.choice(templates))
    return text


def _plant_quirks(rng: random.Random, labels: list[str], texts: list[str]) -> None:
    """Overwrite a few texts with the quoted, unclosed-quote and overlong ones the real file has."""
    hams = [i for i, label in enumerate(labels) if label == "ham"]
    spams = [i for i, label in enumerate(labels) if label == "spam"]
    start = rng.choice([i for i in hams if labels[i + 1 : i + 3] == ["ham", "ham"]])
    texts[start] = _fill(rng, UNCLOSED_QUOTE_HAM)
    texts[start + 2] = _fill(rng, rng.choice(INCH_MARK_HAM))
    free_hams = [i for i in hams if not start <= i <= start + 2]
    *quoted_hams, long_ham, longer_ham = rng.sample(free_hams, len(QUOTED_HAM) + 2)
    quoted_spam, long_spam = rng.sample(spams, 2)
    for position, template in zip(quoted_hams, QUOTED_HAM, strict=True):
        texts[position] = _fill(rng, template)
    texts[quoted_spam] = _fill(rng, QUOTED_SPAM)
    texts[long_ham] = _ramble(rng, "Ok long story, bear with me.", HAM_SENTENCES)
    texts[longer_ham] = _ramble(rng, "sorry this is a long one x", HAM_SENTENCES + HAM_REPLIES)
    opening = f"{rng.choice(SPAM_HOOKS)} {rng.choice(SPAM_ACTIONS)} Terms:"
    texts[long_spam] = _ramble(rng, opening, SPAM_TERMS)
