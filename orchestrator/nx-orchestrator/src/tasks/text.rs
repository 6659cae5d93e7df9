//! A task's output travels as JSON text: chunks of bytes become text without splitting a UTF-8
//! character across two chunks (invalid bytes become U+FFFD).

#[derive(Default)]
pub struct Utf8Chunks {
    carry: Vec<u8>,
}

/// How many bytes at the end of `bytes` start a character that is not complete yet.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for the lead
        }
        let needed = match byte {
            b if b >= 0b1111_0000 => 4,
            b if b >= 0b1110_0000 => 3,
            b if b >= 0b1100_0000 => 2,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

impl Utf8Chunks {
    /// The text of `bytes`, keeping back an incomplete character for the next chunk.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.carry.extend_from_slice(bytes);
        let keep = incomplete_tail(&self.carry);
        let tail = self.carry.split_off(self.carry.len() - keep);
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = tail;
        text
    }

    /// What is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.carry)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_chunks_arrives_whole() {
        let bytes = "héllo €uro 🦀!".as_bytes();
        for cut in 0..bytes.len() {
            let mut chunks = Utf8Chunks::default();
            let mut text = chunks.push(&bytes[..cut]);
            text += &chunks.push(&bytes[cut..]);
            text += &chunks.finish();
            assert_eq!(text, "héllo €uro 🦀!", "cut at {cut}");
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut chunks = Utf8Chunks::default();
        let text = chunks.push(b"a\xffb") + &chunks.push(b"\xe2\x82") + &chunks.finish();
        assert_eq!(text, "a\u{fffd}b\u{fffd}");
    }
}
