//! Generators for benchmarks and tests (not part of the supported API).

use std::fmt::Write as _;

/// A LinkedIn `Connections.csv` with the real preamble, CRLF line ends and `n` rows that use the
/// whole format: quoted fields with commas and doubled quotes, non-ASCII names, missing e-mail
/// addresses, and every 50th row repeating an earlier connection.
pub fn generate_linkedin_csv(n: usize) -> String {
    const FIRST: [&str; 8] = [
        "Ana",
        "Seán",
        "Björn",
        "Grace",
        "Olúwaseun",
        "Mei",
        "José",
        "Priya",
    ];
    const LAST: [&str; 6] = [
        "Nasser",
        "van der Berg",
        "Müller",
        "Nguyen",
        "Álvarez",
        "Okonjo",
    ];
    const COMPANY: [&str; 5] = [
        "Hooli",
        "\"Acme, Inc.\"",
        "\"Umbrella \"\"Bio\"\" Corp\"",
        "Initech LLC",
        "Soylent",
    ];
    const POSITION: [&str; 4] = [
        "Engineer",
        "\"Engineering Manager, Payments\"",
        "VP Sales",
        "Designer",
    ];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut out = String::with_capacity(n.saturating_mul(140).saturating_add(512));
    out.push_str("Notes:\r\n\"When exporting your connection data, you may notice that some of the email addresses are missing. You will only see email addresses for connections who have allowed their connections to see or download their email address using this setting https://www.linkedin.com/psettings/privacy/email. You can learn more here https://www.linkedin.com/help/linkedin/answer/261\"\r\n\r\n");
    out.push_str("First Name,Last Name,URL,Email Address,Company,Position,Connected On\r\n");
    for row in 0..n {
        let i = if row % 50 == 49 { row - 25 } else { row };
        let first = FIRST[i % FIRST.len()];
        let last = LAST[(i / FIRST.len()) % LAST.len()];
        let slug = format!("person-{i:x}");
        let email = if i % 3 == 0 {
            format!("{slug}@example.com")
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "{first},{last},https://www.linkedin.com/in/{slug},{email},{},{},{:02} {} {}\r\n",
            COMPANY[i % COMPANY.len()],
            POSITION[i % POSITION.len()],
            1 + i % 28,
            MONTHS[i % 12],
            2005 + i % 20,
        );
    }
    out
}

/// An mbox of `messages` messages of about `body_bytes` each (Gmail Takeout layout), between the
/// owner `me@example.com` and 2,000 correspondents: every third message sent by the owner (with a
/// `Cc`), the rest received, one in fifty a newsletter. Bodies are 76-byte lines, some starting
/// `>From `.
pub fn write_mbox(
    out: &mut impl std::io::Write,
    messages: usize,
    body_bytes: usize,
) -> std::io::Result<()> {
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod t\n";
    let lines = (body_bytes / line.len()).max(1);
    let mut body = String::with_capacity(lines * line.len());
    for i in 0..lines {
        if i % 20 == 19 {
            body.push_str(">From the archive: a quoted line that starts like a separator...\n");
        } else {
            body.push_str(line);
        }
    }
    for m in 0..messages {
        let person = m % 2_000;
        let day = 1 + m % 28;
        let hour = m % 24;
        let from_me = m % 3 == 0;
        let bulk = m % 50 == 49;
        let mut head = format!(
            "From 1700000000{m:09}@xxx Fri Mar {day:02} {hour:02}:00:00 +0000 2024\n\
X-GM-THRID: 17900000{m:010}\nX-Gmail-Labels: {}\nMessage-ID: <m{m}@mail.example>\n\
Date: Fri, {day:02} Mar 2024 {hour:02}:00:00 +0000\n",
            if from_me { "Sent" } else { "Inbox,Opened" }
        );
        if bulk {
            head.push_str("From: \"Weekly Digest\" <digest@news.example>\nTo: me@example.com\nList-Unsubscribe: <mailto:u@news.example>\nPrecedence: bulk\n");
        } else if from_me {
            let _ = write!(
                head,
                "From: \"Me\" <me@example.com>\nTo: \"Person, Number {person}\" <person{person}@example.org>,\n =?UTF-8?B?w4FsdmFyZXo=?= <alvarez{}@example.org>\nCc: team{}@example.org\n",
                (person + 1) % 2_000,
                person % 50
            );
        } else {
            let _ = write!(
                head,
                "From: =?UTF-8?B?w4FsdmFyZXo=?= <person{person}@example.org>\nTo: me@example.com\n"
            );
        }
        let _ = write!(
            head,
            "Subject: =?UTF-8?Q?Caf=C3=A9_#{m}?=\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\n"
        );
        out.write_all(head.as_bytes())?;
        out.write_all(body.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// An iCalendar file of `events` events over the five years before `now_unix`, with 3,000
/// attendees: a third of them weekly series lasting one to three years (each with an `EXDATE`
/// and every tenth with a moved `RECURRENCE-ID` occurrence), the rest single meetings, half of
/// those in `Europe/Lisbon` local time.
pub fn generate_calendar(events: usize, now_unix: i64) -> String {
    const DAY: i64 = 86_400;
    let start = now_unix - 5 * 365 * DAY;
    let stamp = |unix: i64| {
        chrono::DateTime::from_timestamp(unix, 0)
            .unwrap_or_default()
            .format("%Y%m%dT%H%M%S")
            .to_string()
    };
    let mut out = String::from(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nX-WR-CALNAME:me@example.com\r\n\
BEGIN:VTIMEZONE\r\nTZID:Europe/Lisbon\r\nBEGIN:STANDARD\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0000\r\n\
DTSTART:19701025T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nEND:STANDARD\r\n\
BEGIN:DAYLIGHT\r\nTZOFFSETFROM:+0000\r\nTZOFFSETTO:+0100\r\nDTSTART:19700329T010000\r\n\
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n",
    );
    for e in 0..events {
        let at = start + (e as i64 * 7919 % (5 * 365)) * DAY + (9 + (e as i64 % 8)) * 3600;
        let a = e % 3_000;
        let b = (e * 7 + 1) % 3_000;
        let _ = write!(
            out,
            "BEGIN:VEVENT\r\nUID:event-{e}@example.com\r\nDTSTAMP:20251201T120000Z\r\n\
ORGANIZER;CN=Me:mailto:me@example.com\r\n\
ATTENDEE;CUTYPE=INDIVIDUAL;PARTSTAT=ACCEPTED;CN=Me:mailto:me@example.com\r\n\
ATTENDEE;CUTYPE=INDIVIDUAL;PARTSTAT=ACCEPTED;CN=\"Person\\, {a}\":mailto:p{a}@example.org\r\n\
ATTENDEE;CUTYPE=INDIVIDUAL;PARTSTAT=ACCEPTED;CN=P {b}:mailto:p{b}@example.org\r\n\
SUMMARY:Meeting {e}\r\nDESCRIPTION:Agenda\\, notes\r\n"
        );
        if e % 3 == 0 {
            let weeks = 52 * (1 + e % 3);
            let _ = write!(
                out,
                "DTSTART:{}Z\r\nDTEND:{}Z\r\nRRULE:FREQ=WEEKLY;COUNT={weeks}\r\nEXDATE:{}Z\r\nEND:VEVENT\r\n",
                stamp(at),
                stamp(at + 1800),
                stamp(at + 14 * DAY)
            );
            if e % 30 == 0 {
                let _ = write!(
                    out,
                    "BEGIN:VEVENT\r\nUID:event-{e}@example.com\r\nRECURRENCE-ID:{}Z\r\n\
DTSTART:{}Z\r\nDTEND:{}Z\r\nSEQUENCE:1\r\nSUMMARY:Moved {e}\r\n\
ATTENDEE;PARTSTAT=ACCEPTED:mailto:p{a}@example.org\r\nEND:VEVENT\r\n",
                    stamp(at + 21 * DAY),
                    stamp(at + 22 * DAY),
                    stamp(at + 22 * DAY + 1800)
                );
            }
        } else if e % 2 == 0 {
            let _ = write!(
                out,
                "DTSTART;TZID=Europe/Lisbon:{}\r\nDTEND;TZID=Europe/Lisbon:{}\r\nEND:VEVENT\r\n",
                stamp(at),
                stamp(at + 2700)
            );
        } else {
            let _ = write!(
                out,
                "DTSTART:{}Z\r\nDURATION:PT45M\r\nEND:VEVENT\r\n",
                stamp(at)
            );
        }
    }
    out.push_str("END:VCALENDAR\r\n");
    out
}

/// The `data/*.js` members of a Twitter archive with `follows` accounts followed and as many
/// followers (half of them mutual), mentions of every tenth in 10,000 tweets, and a
/// direct-messages file. Zip them with any zip writer.
pub fn generate_twitter_members(follows: usize) -> Vec<(String, String)> {
    let mut following = String::from("window.YTD.following.part0 = [\n");
    let mut follower = String::from("window.YTD.follower.part0 = [\n");
    for i in 0..follows {
        let sep = if i + 1 == follows { "" } else { "," };
        let _ = writeln!(
            following,
            "  {{\"following\": {{\"accountId\": \"{}\", \"userLink\": \"https://twitter.com/intent/user?user_id={}\"}}}}{sep}",
            1_000_000 + i,
            1_000_000 + i
        );
        let _ = writeln!(
            follower,
            "  {{\"follower\": {{\"accountId\": \"{}\", \"userLink\": \"https://twitter.com/intent/user?user_id={}\"}}}}{sep}",
            1_000_000 + follows / 2 + i,
            1_000_000 + follows / 2 + i
        );
    }
    following.push(']');
    follower.push(']');
    let mut tweets = String::from("window.YTD.tweets.part0 = [\n");
    for t in 0..10_000usize {
        let id = 1_000_000 + (t * 10) % follows.max(1);
        let sep = if t + 1 == 10_000 { "" } else { "," };
        let _ = writeln!(
            tweets,
            "  {{\"tweet\": {{\"id_str\": \"{t}\", \"full_text\": \"Great chat with @user_{id}\", \"entities\": {{\"user_mentions\": [{{\"name\": \"Person {id}\", \"screen_name\": \"user_{id}\", \"id_str\": \"{id}\"}}], \"hashtags\": []}}}}}}{sep}"
        );
    }
    tweets.push(']');
    vec![
        (
            "data/account.js".into(),
            "window.YTD.account.part0 = [{\"account\": {\"accountId\": \"1\", \"username\": \"me\"}}]".into(),
        ),
        ("data/following.js".into(), following),
        ("data/follower.js".into(), follower),
        ("data/tweets.js".into(), tweets),
        (
            "data/direct-messages.js".into(),
            "window.YTD.direct_messages.part0 = [{\"dmConversation\": {\"messages\": [{\"messageCreate\": {\"text\": \"never read\"}}]}}]".into(),
        ),
    ]
}
