//! The project's protocol docs list exactly the codes the broker sends.

use starling_protocol::{CloseCode, ErrorCode, HttpErrorCode};

const PROTOCOL_DOC: &str = include_str!("../../docs/protocol.md");

#[test]
fn every_error_and_http_code_is_documented() {
    let codes = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .chain(HttpErrorCode::ALL.iter().map(|c| c.as_str()));
    for code in codes {
        assert!(
            PROTOCOL_DOC.contains(&format!("`{code}`")),
            "docs/protocol.md does not mention `{code}`"
        );
    }
}

#[test]
fn every_close_code_is_documented() {
    let section = PROTOCOL_DOC
        .split("## Close codes")
        .nth(1)
        .expect("a Close codes section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    for code in CloseCode::ALL {
        assert!(
            section.contains(&code.code().to_string()),
            "the Close codes section does not list {}",
            code.code()
        );
    }
    // And nothing the broker does not send.
    for word in section.split(|c: char| !c.is_ascii_digit()) {
        if word.len() == 4 && (word.starts_with('1') || word.starts_with('4')) {
            let number: u16 = word.parse().unwrap();
            assert!(
                CloseCode::from_code(number).is_some() || number == 4500 || number == 4999,
                "the Close codes section lists {number}, which is not a CloseCode"
            );
        }
    }
}
