//! Invite links as QR-code PNG files, for people who scan rather than click.

use std::path::Path;

use anyhow::Context as _;

/// Pixels per QR module, and the quiet zone in modules.
const SCALE: usize = 8;
const QUIET: usize = 4;

/// Writes `text` as a black-on-white QR code PNG file.
pub fn write_png(text: &str, path: &Path) -> anyhow::Result<()> {
    let png = png(text)?;
    std::fs::write(path, png).with_context(|| format!("cannot write {}", path.display()))
}

/// `text` as a black-on-white QR code PNG.
pub fn png(text: &str) -> anyhow::Result<Vec<u8>> {
    let code = qrcode::QrCode::new(text.as_bytes()).context("the link is too long for a QR code")?;
    let width = code.width();
    let colors = code.to_colors();
    let side = (width + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let (mx, my) = (i % width + QUIET, i / width + QUIET);
            for y in my * SCALE..(my + 1) * SCALE {
                pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
            }
        }
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, side as u32, side as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().context("PNG header")?;
    w.write_image_data(&pixels).context("PNG data")?;
    w.finish().context("PNG end")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_a_square_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.png");
        super::write_png("https://i.delta.chat/#ABC", &path).expect("png");
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).expect("open")));
        let reader = decoder.read_info().expect("valid png");
        let info = reader.info();
        assert_eq!(info.width, info.height);
        assert!(info.width as usize >= (21 + 8) * 8);
    }
}
