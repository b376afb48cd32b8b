//! A QR code of the link code, drawn with Unicode half blocks (two modules per character
//! cell), so a phone can scan it off the terminal.

use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

/// Modules of quiet zone the renderer draws on each side.
const QUIET_ZONE: usize = 4;

/// Why no QR code was drawn.
#[derive(Debug, PartialEq, Eq)]
pub enum Skipped {
    /// The text does not fit in any QR code.
    TooLong,
    /// The code needs this many columns, more than the terminal has.
    TooWide(usize),
}

/// The QR code of `text` in at most `columns` character cells per line.
pub fn render(text: &str, columns: usize) -> Result<String, Skipped> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)
        .map_err(|_| Skipped::TooLong)?;
    let needed = code.width() + 2 * QUIET_ZONE;
    if needed > columns {
        return Err(Skipped::TooWide(needed));
    }
    // Light modules drawn as full blocks: dark-on-light for terminals with a dark background.
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_renders_as_half_blocks_within_the_width() {
        let art = render("KITH-LINK-TEST", 80).expect("fits");
        assert!(art.lines().count() > 10);
        assert!(art.lines().all(|line| line.chars().count() <= 80));
        assert!(art.contains('█') || art.contains('▀') || art.contains('▄'));
    }

    #[test]
    fn a_code_wider_than_the_terminal_is_skipped() {
        assert!(matches!(render(&"k".repeat(1730), 80), Err(Skipped::TooWide(n)) if n > 80));
    }

    #[test]
    fn text_too_long_for_a_qr_code_is_skipped() {
        assert_eq!(render(&"x".repeat(5000), 1000), Err(Skipped::TooLong));
    }
}
