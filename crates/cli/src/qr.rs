//! A QR code of the link code, drawn with Unicode half blocks (two modules per character
//! cell), so a phone can scan it off the terminal.

use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

/// Widest code drawn (modules, quiet zone excluded): wider ones do not fit an ordinary
/// terminal and would not scan off it.
const MAX_MODULES: usize = 121;

/// The QR code of `text`, or `None` when it does not fit in a QR code a terminal can show.
pub fn render(text: &str) -> Option<String> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L).ok()?;
    if code.width() > MAX_MODULES {
        return None;
    }
    // Light modules drawn as full blocks: dark-on-light for terminals with a dark background.
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_renders_as_half_blocks() {
        let art = render("KITH-LINK-TEST").expect("fits");
        assert!(art.lines().count() > 10);
        assert!(art.contains('█') || art.contains('▀') || art.contains('▄'));
    }

    #[test]
    fn text_too_long_for_a_qr_code_is_skipped() {
        assert!(render(&"x".repeat(5000)).is_none());
    }
}
