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
