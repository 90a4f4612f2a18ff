"""Sentences of the built-in corpus: aligned (English, German, Japanese) triples.

Two kinds of pools:

* :data:`EMOTION_SENTENCES` — for each of MELD's 7 emotions, 10 sentences whose *wording* carries
  the emotion ("How dare you lie to me again!" for anger).
* :data:`NEUTRAL_CONTENT_SENTENCES` — 20 sentences with no emotional content ("The keys are on the
  kitchen table."), spoken with any emotion's prosody. The generator draws from this pool with
  probability ``neutral_text_fraction`` so that the transcript alone cannot solve the task.

Japanese is written in **kana only**, because eSpeak NG reads kanji as "Chinese letter". Its
readings of particles follow the letters, not the grammar, so the topic particle は is written わ
and the direction particle へ is written え (eSpeak reads を as "o", so を stays). Words are
separated by spaces, which eSpeak's Japanese voice uses for phrasing.

**Split rule** (fixed, independent of the seed): the sentence at position ``i`` of a pool belongs
to ``train`` when ``i % 5`` is 0, 1 or 2, to ``dev`` when it is 3, and to ``test`` when it is 4 —
a 60/20/20 split in which train, dev and test sentences are disjoint. A model that memorises
training transcripts gains nothing on dev or test (measured on an earlier version: with shared
sentences, audio+text scored 1.0 with the audio zeroed).
"""
from __future__ import annotations

from dataclasses import dataclass

from llmfair.data.labels import MELD
from llmfair.errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "dev", "test")


@dataclass(frozen=True)
class SentenceTriple:
    """One sentence and its translations. ``id`` is ``<pool>-<position>``, e.g. ``anger-03``."""

    id: str
    english: str
    german: str
    japanese: str

    def text(self, language: str) -> str:
        """The sentence in ``language`` (``eng``, ``deu`` or ``jpn``)."""
        try:
            return {"eng": self.english, "deu": self.german, "jpn": self.japanese}[language]
        except KeyError:
            raise ConfigError(f"no sentence text for language {language!r}; expected eng, deu or jpn") from None


def _pool(name: str, rows: list[tuple[str, str, str]]) -> tuple[SentenceTriple, ...]:
    return tuple(SentenceTriple(f"{name}-{i:02d}", en, de, ja) for i, (en, de, ja) in enumerate(rows))


EMOTION_SENTENCES: dict[str, tuple[SentenceTriple, ...]] = {
    "neutral": _pool("neutral", [
        ("I think the train leaves at nine.", "Ich glaube, der Zug fährt um neun.",
         "でんしゃわ くじに でると おもう。"),
        ("Can you pass me the salt, please?", "Kannst du mir bitte das Salz geben?",
         "しお を とって くれる？"),
        ("We usually eat dinner at seven.", "Wir essen normalerweise um sieben zu Abend.",
         "ゆうはん わ たいてい しちじ です。"),
        ("The shop is on the other side of the street.", "Der Laden ist auf der anderen Straßenseite.",
         "みせ わ みちの むこうがわ に あります。"),
        ("I will call you when I get home.", "Ich rufe dich an, wenn ich zu Hause bin.",
         "いえに ついたら でんわ する ね。"),
        ("Let me check my calendar first.", "Lass mich zuerst in meinen Kalender schauen.",
         "まず よていを かくにん する ね。"),
        ("The report is due on Friday.", "Der Bericht ist am Freitag fällig.",
         "ほうこくしょ の しめきり わ きんようび です。"),
        ("She lives near here.", "Sie wohnt hier in der Nähe.",
         "かのじょ わ この ちかくに すんで います。"),
        ("I need to buy some milk and bread.", "Ich muss Milch und Brot kaufen.",
         "ぎゅうにゅう と パン を かわ なきゃ。"),
        ("The bus was a few minutes late.", "Der Bus kam ein paar Minuten zu spät.",
         "バスが すこし おくれて きました。"),
    ]),
    "joy": _pool("joy", [
        ("I got the job! This is the best day ever!", "Ich habe den Job! Das ist der beste Tag überhaupt!",
         "しごとが きまった！ さいこうの ひ だよ！"),
        ("I love it, thank you so much!", "Ich liebe es, vielen Dank!",
         "だいすき！ ほんとうに ありがとう！"),
        ("We won! I can't stop smiling!", "Wir haben gewonnen! Ich kann nicht aufhören zu lächeln!",
         "かった！ えがおが とまらない よ！"),
        ("This is wonderful, I'm so happy for you!", "Das ist wunderbar, ich freue mich so für dich!",
         "すばらしい！ ほんとうに よかった ね！"),
        ("We're going on vacation tomorrow, hooray!", "Morgen fahren wir in den Urlaub, juhu!",
         "あした から りょこう だ、 やった！"),
        ("You passed the exam? That's fantastic!", "Du hast die Prüfung bestanden? Das ist fantastisch!",
         "しけんに ごうかく した の？ すごく うれしい！"),
        ("Everything worked out perfectly, I'm thrilled!", "Alles hat perfekt geklappt, ich bin begeistert!",
         "ぜんぶ うまく いった！ たのしくて しかたない！"),
        ("I'm so glad you came, this is great!", "Ich bin so froh, dass du gekommen bist, das ist toll!",
         "きて くれて うれしい！ さいこう！"),
        ("Happy birthday! Let's celebrate all night!", "Alles Gute zum Geburtstag! Lass uns die ganze Nacht feiern!",
         "おたんじょうび おめでとう！ よるまで おいわい しよう！"),
        ("Best news I've heard all year, I'm delighted!", "Die beste Nachricht des Jahres, ich bin überglücklich!",
         "ことし いちばんの いい ニュース だ、 うれしい な！"),
    ]),
    "sadness": _pool("sadness", [
        ("I miss her so much, nothing feels right anymore.",
         "Ich vermisse sie so sehr, nichts fühlt sich mehr richtig an.",
         "かのじょが いなくて さびしい。 なにも かも つらい。"),
        ("He's gone, and he's never coming back.", "Er ist fort, und er kommt nie wieder.",
         "かれわ いって しまった。 もう もどって こない。"),
        ("I failed again. I'm so tired of trying.", "Ich bin wieder gescheitert. Ich bin es so leid.",
         "また だめ だった。 もう つかれた よ。"),
        ("Nobody called me on my birthday.", "Niemand hat mich an meinem Geburtstag angerufen.",
         "たんじょうび なのに だれも でんわ して くれなかった。"),
        ("I feel so lonely in this empty house.", "Ich fühle mich so einsam in diesem leeren Haus.",
         "この からっぽの いえで ひとりぼっち で かなしい。"),
        ("We had to say goodbye to our old dog today.", "Wir mussten uns heute von unserem alten Hund verabschieden.",
         "きょう ふるい いぬに さよなら した。"),
        ("It's over between us. I cried all night.", "Es ist aus zwischen uns. Ich habe die ganze Nacht geweint.",
         "わたしたち わ もう おわり。 ひとばんじゅう ないた。"),
        ("I lost everything I worked for.", "Ich habe alles verloren, wofür ich gearbeitet habe.",
         "がんばって きた もの を ぜんぶ なくした。"),
        ("I wish things could be the way they were.", "Ich wünschte, alles wäre wie früher.",
         "むかしに もどれたら いいのに。 かなしい なあ。"),
        ("My heart is broken, I don't know what to do.", "Mein Herz ist gebrochen, ich weiß nicht, was ich tun soll.",
         "むねが いたい。 どう したら いいか わからない。"),
    ]),
    "anger": _pool("anger", [
        ("How dare you lie to me again!", "Wie kannst du es wagen, mich wieder anzulügen!",
         "また うそを ついた な！ ゆるさない！"),
        ("Get out of my room right now!", "Raus aus meinem Zimmer, sofort!",
         "いますぐ へやから でて いけ！"),
        ("I'm sick of your excuses, stop it!", "Ich habe deine Ausreden satt, hör auf!",
         "いいわけ わ もう たくさん だ、 やめろ！"),
        ("You broke it on purpose, didn't you?", "Du hast es absichtlich kaputt gemacht, oder?",
         "わざと こわした ん だろう！"),
        ("Don't you ever touch my things again!", "Fass nie wieder meine Sachen an!",
         "にどと わたしの もの に さわる な！"),
        ("This is the third time you've been late, I'm furious!",
         "Du bist schon zum dritten Mal zu spät, ich bin wütend!",
         "ちこく わ これで さんかいめ だ、 あたまに くる！"),
        ("Shut up and listen to me!", "Halt den Mund und hör mir zu!",
         "だまって わたしの はなしを きけ！"),
        ("You ruined everything, you idiot!", "Du hast alles ruiniert, du Idiot!",
         "ぜんぶ だいなし だ、 ばかやろう！"),
        ("I told you a hundred times, are you deaf?", "Ich habe es dir hundertmal gesagt, bist du taub?",
         "ひゃっかい いった だろう、 きいて ない の か！"),
        ("That's it, I'm done with you!", "Das reicht, ich bin fertig mit dir!",
         "もう いい、 おまえ とわ これまで だ！"),
    ]),
    "surprise": _pool("surprise", [
        ("Wait, you're getting married? Really?", "Moment, du heiratest? Wirklich?",
         "え、 けっこん する の？ ほんとう に？"),
        ("No way! Is that really you?", "Nicht möglich! Bist du das wirklich?",
         "うそ！ ほんとうに あなた なの？"),
        ("Oh my god, I didn't expect that at all!", "Oh mein Gott, damit habe ich überhaupt nicht gerechnet!",
         "えっ、 まったく よそう して なかった！"),
        ("What? You've been here the whole time?", "Was? Du warst die ganze Zeit hier?",
         "なに？ ずっと ここに いた の？"),
        ("Whoa, when did you learn to do that?", "Wow, wann hast du das gelernt?",
         "わあ、 いつの まに できる ように なった の？"),
        ("You're kidding! She said yes?", "Du machst Witze! Sie hat ja gesagt?",
         "じょうだん でしょう！ かのじょが オーケー した の？"),
        ("Twins? Are you serious?", "Zwillinge? Ist das dein Ernst?",
         "ふたご？ ほんき で いってる の？"),
        ("I can't believe it, the whole team is here!", "Ich fasse es nicht, das ganze Team ist hier!",
         "しんじられない、 チームの みんなが いる！"),
        ("Really? He won the lottery?", "Echt? Er hat im Lotto gewonnen?",
         "まじで？ かれが たからくじに あたった の？"),
        ("Hold on, this was your idea all along?", "Moment mal, das war die ganze Zeit deine Idee?",
         "ちょっと まって、 さいしょ から あなたの アイデア だった の？"),
    ]),
    "fear": _pool("fear", [
        ("Did you hear that? Someone is in the house.", "Hast du das gehört? Jemand ist im Haus.",
         "いまの きこえた？ だれか いえに いる。"),
        ("Please don't leave me alone here, I'm scared.", "Bitte lass mich hier nicht allein, ich habe Angst.",
         "おねがい、 ひとりに しないで。 こわい の。"),
        ("The brakes aren't working, we're going to crash!", "Die Bremsen gehen nicht, wir werden verunglücken!",
         "ブレーキが きかない、 ぶつかる！"),
        ("What if they find us? What do we do?", "Was, wenn sie uns finden? Was machen wir dann?",
         "みつかったら どう しよう？ どう すれば いい の？"),
        ("I think someone is following me.", "Ich glaube, jemand verfolgt mich.",
         "だれかに つけられて いる きが する。"),
        ("There's smoke everywhere, help!", "Überall ist Rauch, Hilfe!",
         "そこら じゅう けむり だらけ、 たすけて！"),
        ("I'm terrified of what the doctor will say.", "Ich habe schreckliche Angst vor dem, was der Arzt sagt.",
         "いしゃに なにを いわれるか こわくて たまらない。"),
        ("Don't open that door, please, don't!", "Mach die Tür nicht auf, bitte nicht!",
         "その ドアを あけないで、 おねがい！"),
        ("The lights went out and something moved.", "Das Licht ist ausgegangen, und etwas hat sich bewegt.",
         "でんきが きえて、 なにかが うごいた。"),
        ("My hands are shaking, I can't breathe.", "Meine Hände zittern, ich kann nicht atmen.",
         "てが ふるえて、 いきが できない。"),
    ]),
    "disgust": _pool("disgust", [
        ("Ugh, this milk smells rotten.", "Igitt, diese Milch riecht verdorben.",
         "うえっ、 この ぎゅうにゅう くさって る。"),
        ("That is the most disgusting thing I've ever seen.", "Das ist das Ekligste, was ich je gesehen habe.",
         "こんなに きもちわるい もの わ はじめて みた。"),
        ("Gross, there's hair in my soup.", "Igitt, da ist ein Haar in meiner Suppe.",
         "げっ、 スープに かみのけが はいってる。"),
        ("How can you eat that? It's revolting.", "Wie kannst du das essen? Das ist widerlich.",
         "よく そんな もの たべられる ね。 きもちわるい。"),
        ("The bathroom is filthy, I won't go in there.", "Das Bad ist dreckig, da gehe ich nicht rein.",
         "トイレが きたなすぎて はいれない。"),
        ("Yuck, don't chew with your mouth open.", "Pfui, kau nicht mit offenem Mund.",
         "うわ、 くちを あけて かまないで よ。"),
        ("What he did was vile, it makes me sick.", "Was er getan hat, war abscheulich, mir wird übel.",
         "かれの した こと わ さいてい。 はきけが する。"),
        ("Something slimy is stuck to my shoe.", "An meinem Schuh klebt etwas Schleimiges.",
         "くつに なにか ぬるぬる した もの が ついてる。"),
        ("This sandwich is covered in mold.", "Dieses Sandwich ist voller Schimmel.",
         "この サンドイッチ、 カビだらけ じゃない。"),
        ("Eww, the fridge smells like dead fish.", "Bäh, der Kühlschrank riecht nach totem Fisch.",
         "うえ、 れいぞうこが くさった さかなの においが する。"),
    ]),
}
"""Per MELD emotion, sentences whose wording carries that emotion (keys in MELD order)."""

NEUTRAL_CONTENT_SENTENCES: tuple[SentenceTriple, ...] = _pool("content", [
    ("The package arrived this morning.", "Das Paket ist heute Morgen angekommen.",
     "にもつが けさ とどいた。"),
    ("I'm going to the store on Monday.", "Ich gehe am Montag in den Laden.",
     "げつようびに みせに いく。"),
    ("He said the meeting moved to Tuesday.", "Er sagte, das Treffen wurde auf Dienstag verlegt.",
     "かいぎわ かようびに なった って。"),
    ("The keys are on the kitchen table.", "Die Schlüssel liegen auf dem Küchentisch.",
     "かぎわ だいどころの テーブルの うえに ある。"),
    ("She's talking to my brother right now.", "Sie spricht gerade mit meinem Bruder.",
     "かのじょわ いま おとうとと はなして いる。"),
    ("We have to be there by eight.", "Wir müssen um acht dort sein.",
     "はちじ までに いかなきゃ いけない。"),
    ("Did you see the letter from the bank?", "Hast du den Brief von der Bank gesehen?",
     "ぎんこう からの てがみ みた？"),
    ("That's what he told me yesterday.", "Das hat er mir gestern gesagt.",
     "きのう かれが そう いった の。"),
    ("They painted the house last week.", "Sie haben letzte Woche das Haus gestrichen.",
     "せんしゅう いえの ペンキを ぬりかえた。"),
    ("It's the phone call from my mother.", "Es ist der Anruf von meiner Mutter.",
     "ははから の でんわ だ。"),
    ("You know what happened at the office.", "Du weißt, was im Büro passiert ist.",
     "かいしゃで なにが あったか しってる でしょう。"),
    ("The doctor wants to see me again.", "Der Arzt will mich noch einmal sehen.",
     "いしゃが もう いちど みたい って。"),
    ("I found the old photos in the box.", "Ich habe die alten Fotos in der Kiste gefunden.",
     "はこの なかに ふるい しゃしんが あった。"),
    ("Your sister just came through the door.", "Deine Schwester ist gerade zur Tür hereingekommen.",
     "いま あなたの いもうとが はいって きた。"),
    ("So this is the new apartment.", "Das ist also die neue Wohnung.",
     "これが あたらしい アパート なんだ。"),
    ("It is going to rain all weekend.", "Es wird das ganze Wochenende regnen.",
     "しゅうまつわ ずっと あめ らしい。"),
    ("They told us about it at dinner.", "Sie haben uns beim Abendessen davon erzählt.",
     "ゆうしょくの ときに その はなしを きいた。"),
    ("I read the message twice.", "Ich habe die Nachricht zweimal gelesen.",
     "メッセージを にかい よんだ。"),
    ("That was the last train of the night.", "Das war der letzte Zug der Nacht.",
     "それが しゅうでん だった。"),
    ("He is moving to another city next month.", "Er zieht nächsten Monat in eine andere Stadt.",
     "かれわ らいげつ ほかの まちに ひっこす。"),
])
"""Emotionally neutral content, spoken with any emotion's prosody."""


def sentence_split(position: int) -> str:
    """The split of the sentence at ``position`` of its pool (the fixed 60/20/20 rule above)."""
    r = position % 5
    return "train" if r < 3 else ("dev" if r == 3 else "test")


def sentences_for(pool: tuple[SentenceTriple, ...], split: str) -> tuple[SentenceTriple, ...]:
    """The sentences of ``pool`` that ``split`` may use."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return tuple(s for i, s in enumerate(pool) if sentence_split(i) == split)


def _check_pools() -> None:
    if tuple(EMOTION_SENTENCES) != MELD.classes:
        raise RuntimeError("EMOTION_SENTENCES must list MELD's emotions in MELD order")
    for pool in (*EMOTION_SENTENCES.values(), NEUTRAL_CONTENT_SENTENCES):
        for split in SPLITS:
            if not sentences_for(pool, split):
                raise RuntimeError(f"sentence pool {pool[0].id.split('-')[0]} has no {split} sentences")


_check_pools()
