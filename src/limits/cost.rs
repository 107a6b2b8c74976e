//! What one request costs in tokens (SPEC §3 "Cost"): the SMS segments of a text field
//! times the number of recipients, both read from the request body.
//!
//! Owns: the GSM-7 / UCS-2 segment count, the recipient count, and finding the two fields
//! in a JSON or `application/x-www-form-urlencoded` body.
//!
//! Must not: do I/O, keep state, or panic on any bytes — the body is the client's. It does
//! not decide what an unreadable body costs; it says so ([`Unreadable`]) and the caller
//! charges 1 and counts it.
//!
//! Approximate, each stricter than a carrier (more parts, never fewer) except the last:
//! - national language shift tables (TS 23.038 §6.2.1.2) are not modelled: a text only a
//!   Turkish or Portuguese shift table makes GSM-7 counts as UCS-2;
//! - a vendor's substitution of look-alike characters (Twilio's "smart encoding") is not
//!   modelled: a curly quote makes the whole text UCS-2;
//! - a form body is decoded lossily: an invalid UTF-8 sequence becomes U+FFFD, so UCS-2;
//! - parts are packed per code point: a surrogate pair or an extension character never
//!   straddles two parts, but a multi-code-point grapheme (a ZWJ emoji family, a flag) may
//!   be split between its code points, where Twilio's calculator moves the whole grapheme
//!   to the next part — at such a boundary this can count one part fewer than Twilio.

use serde_json::Value;

use crate::pointer::Pointer;

/// Septets in a single-part GSM-7 message (TS 23.040 §9.2.3.24: 140 octets × 8 / 7).
const GSM_SINGLE: u32 = 160;
/// Septets per part of a concatenated GSM-7 message: 140 octets less the 6-octet
/// concatenation header, rounded down to whole septets.
const GSM_PART: u32 = 153;
/// UTF-16 code units in a single-part UCS-2 message (140 octets / 2).
const UCS2_SINGLE: u32 = 70;
/// UTF-16 code units per part of a concatenated UCS-2 message ((140 − 6) / 2).
const UCS2_PART: u32 = 67;

/// Where in the request body an endpoint's cost is read: two JSON pointers (RFC 6901).
///
/// A pointer that is `None`, or that addresses nothing in a given body, contributes 1.
/// On a form body a pointer addresses a field by name (`/Body` is field `Body`, `~1` and
/// `~0` unescape to `/` and `~`); a pointer with more than one segment addresses nothing
/// there, since form fields do not nest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostSpec {
    /// The message text whose SMS segments multiply the cost.
    pub segments: Option<String>,
    /// The recipient list whose length multiplies the cost.
    pub recipients: Option<String>,
}

/// A [`CostSpec`] made ready for requests, once, when the config is compiled: each pointer
/// cut into its tokens and the form field it names worked out, where `Value::pointer` and
/// the field's name were parsed again on every request.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    segments: Option<Field>,
    recipients: Option<Field>,
}

/// One of a cost's two pointers, compiled.
#[derive(Debug, Clone)]
struct Field {
    pointer: Pointer,
    /// The form field it names; `None` for the root pointer or a deeper one.
    form: Option<Box<str>>,
}

impl Field {
    /// `None` for an unset pointer, or one that is not a JSON pointer (the config refuses
    /// those): either addresses nothing in any body, so it contributes 1.
    fn new(pointer: Option<&str>) -> Option<Field> {
        let text = pointer?;
        Some(Field {
            pointer: Pointer::parse(text)?,
            form: field_name(text).map(String::into_boxed_str),
        })
    }
}

impl Cost {
    /// Compiles `spec`.
    pub fn new(spec: &CostSpec) -> Cost {
        Cost {
            segments: Field::new(spec.segments.as_deref()),
            recipients: Field::new(spec.recipients.as_deref()),
        }
    }
}

/// Why a body's cost could not be read. The caller charges 1 and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// The body is not JSON or a form as its content type says, or the content type is
    /// neither and the body does not look like JSON.
    #[error("request body could not be parsed for its cost")]
    Body,
    /// A pointer addresses a value of the wrong type: `segments` something other than a
    /// string, or `recipients` an object.
    #[error("request body field has the wrong type for its cost")]
    WrongType,
}

impl Unreadable {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Unreadable::Body => "body",
            Unreadable::WrongType => "wrong_type",
        }
    }
}

/// Septets one character takes in the GSM 7-bit default alphabet, or `None` if it is not in
/// it (the text is then sent as UCS-2).
///
/// The table is 3GPP TS 23.038 §6.2.1 (the default alphabet: 127 characters, position
/// 0x1B being the escape) and §6.2.1.1 (the default extension table, whose characters are
/// sent as escape + character, 2 septets). It is also the table of Twilio's segment
/// calculator (`TwilioDevEd/message-segment-calculator`, `src/libs/UnicodeToGSM.ts`).
/// Position 0x09 is capital `Ç`, not `ç`; backtick, tab and `ç` are not GSM-7.
fn septets(c: char) -> Option<u32> {
    match c {
        // Every ASCII character from space to `?` is in the basic set, though not all at
        // its ASCII position (`$` is 0x02; `¤` has 0x24).
        '\n' | '\r' | ' '..='?' | '@' | 'A'..='Z' | '_' | 'a'..='z' => Some(1),
        '¡' | '£' | '¤' | '¥' | '§' | '¿' => Some(1),
        'Ä' | 'Å' | 'Æ' | 'Ç' | 'É' | 'Ñ' | 'Ö' | 'Ø' | 'Ü' | 'ß' => Some(1),
        'à' | 'ä' | 'å' | 'æ' | 'è' | 'é' | 'ì' | 'ñ' | 'ò' | 'ö' | 'ø' | 'ù' | 'ü' => {
            Some(1)
        }
        'Γ' | 'Δ' | 'Θ' | 'Λ' | 'Ξ' | 'Π' | 'Σ' | 'Φ' | 'Ψ' | 'Ω' => Some(1),
        '\u{0C}' | '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' | '€' => Some(2),
        _ => None,
    }
}

/// Counts the parts of one encoding as units arrive: one part while the total fits
/// `single`, else parts of `part` filled in order, a unit that does not fit what is left of
/// a part starting the next one (so an escape and its character, or a surrogate pair, is
/// never split).
struct Packer {
    single: u32,
    part: u32,
    total: u64,
    parts: u32,
    used: u32,
}

impl Packer {
    fn new(single: u32, part: u32) -> Self {
        Packer {
            single,
            part,
            total: 0,
            parts: 1,
            used: 0,
        }
    }

    fn push(&mut self, units: u32) {
        self.total += u64::from(units);
        // `used` never exceeds `part` and a unit is at most 2, so this cannot overflow.
        if self.used + units > self.part {
            self.parts = self.parts.saturating_add(1);
            self.used = 0;
        }
        self.used += units;
    }

    fn parts(&self) -> u32 {
        if self.total <= u64::from(self.single) {
            1
        } else {
            self.parts
        }
    }
}

/// The SMS segments (parts) `text` is sent as.
///
/// GSM-7 if every character is in the default alphabet or its extension table (3GPP TS
/// 23.038 §6.2.1, §6.2.1.1; extension characters `^{}\[~]|€` and form feed take 2 septets):
/// 160 septets fit one part, else 153 per part. Otherwise UCS-2, counted in UTF-16 code
/// units: 70 fit one part, else 67 per part. Parts are filled in order and a 2-unit
/// character (an extension character, a surrogate pair) that does not fit what is left of a
/// part moves whole to the next, as handsets and Twilio's segment calculator do — so 152
/// septets then `€` then 152 more is 3 parts, not 2. An empty text is 1 segment: an empty
/// SMS is still one message.
pub fn segments(text: &str) -> u32 {
    let mut gsm = Some(Packer::new(GSM_SINGLE, GSM_PART));
    let mut ucs2 = Packer::new(UCS2_SINGLE, UCS2_PART);
    for c in text.chars() {
        if let Some(p) = gsm.as_mut() {
            match septets(c) {
                Some(n) => p.push(n),
                None => gsm = None,
            }
        }
        // `len_utf16` is 1 or 2.
        ucs2.push(c.len_utf16() as u32);
    }
    gsm.map_or_else(|| ucs2.parts(), |p| p.parts())
}

/// The recipients `v` names: the entries of an array, or of a comma-separated string,
/// empty entries (empty or blank strings, nulls) ignored; any other non-empty scalar is 1.
/// At least 1: a request names its sender's one recipient if it names none.
pub fn recipients(v: &Value) -> u32 {
    let n = match v {
        Value::Array(entries) => entries
            .iter()
            .filter(|e| match e {
                Value::Null => false,
                Value::String(s) => !s.trim().is_empty(),
                _ => true,
            })
            .count(),
        Value::String(s) => s.split(',').filter(|e| !e.trim().is_empty()).count(),
        _ => 1,
    };
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

/// What one request costs: [`segments`] of the text at `spec.segments` × [`recipients`] at
/// `spec.recipients`, saturating at `u32::MAX`. A pointer that is unset or addresses
/// nothing (or `null`) contributes 1, and a spec with neither pointer costs 1 without
/// reading the body.
///
/// The body is JSON if `content_type` says `application/json` or `…+json`, a form if it
/// says `application/x-www-form-urlencoded` (percent-decoded, `+` as space; a repeated
/// field is an array), and otherwise JSON if it starts with `{` or `[`.
///
/// # Errors
/// [`Unreadable::Body`] if the body cannot be parsed as that, [`Unreadable::WrongType`] if a
/// pointer addresses a value of the wrong type.
pub fn cost(spec: &Cost, content_type: &str, body: &[u8]) -> Result<u32, Unreadable> {
    if spec.segments.is_none() && spec.recipients.is_none() {
        return Ok(1);
    }
    match syntax(content_type, body).ok_or(Unreadable::Body)? {
        Syntax::Json => {
            let doc: Value = serde_json::from_slice(body).map_err(|_| Unreadable::Body)?;
            let at = |f: &Option<Field>| f.as_ref().and_then(|f| f.pointer.get(&doc));
            product(at(&spec.segments), at(&spec.recipients))
        }
        Syntax::Form => {
            let (text, to) = form_fields(body, spec);
            product(text.as_ref(), to.as_ref())
        }
    }
}

/// Segments of `text` × recipients in `to`, each 1 when absent or `null`.
fn product(text: Option<&Value>, to: Option<&Value>) -> Result<u32, Unreadable> {
    let segments = match text {
        None | Some(Value::Null) => 1,
        Some(Value::String(s)) => segments(s),
        Some(_) => return Err(Unreadable::WrongType),
    };
    let recipients = match to {
        None | Some(Value::Null) => 1,
        Some(Value::Object(_)) => return Err(Unreadable::WrongType),
        Some(v) => recipients(v),
    };
    Ok(segments.saturating_mul(recipients))
}

/// How a body is read.
enum Syntax {
    Json,
    Form,
}

/// The body's syntax by its content type (parameters such as `charset` ignored), else by
/// its first non-blank byte; `None` if neither says.
fn syntax(content_type: &str, body: &[u8]) -> Option<Syntax> {
    let media = content_type
        .split_once(';')
        .map_or(content_type, |(m, _)| m)
        .trim()
        .as_bytes();
    if media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        return Some(Syntax::Form);
    }
    let suffix_json = media
        .len()
        .checked_sub(5)
        .and_then(|i| media.get(i..))
        .is_some_and(|s| s.eq_ignore_ascii_case(b"+json"));
    if suffix_json || media.eq_ignore_ascii_case(b"application/json") {
        return Some(Syntax::Json);
    }
    match body.trim_ascii_start().first() {
        Some(b'{' | b'[') => Some(Syntax::Json),
        _ => None,
    }
}

/// The values of the fields `spec`'s pointers name in a form body, in one pass: a field
/// seen once is a string, a repeated field an array of its values.
fn form_fields(body: &[u8], spec: &Cost) -> (Option<Value>, Option<Value>) {
    let (text_name, to_name) = (form_name(&spec.segments), form_name(&spec.recipients));
    let (mut text, mut to) = (None, None);
    for (name, value) in form_urlencoded::parse(body) {
        if text_name == Some(&*name) {
            add(&mut text, &value);
        }
        if to_name == Some(&*name) {
            add(&mut to, &value);
        }
    }
    (text, to)
}

/// The form field a compiled pointer names, if any.
fn form_name(field: &Option<Field>) -> Option<&str> {
    field.as_ref().and_then(|f| f.form.as_deref())
}

/// Adds one occurrence of a form field to what was seen of it.
fn add(seen: &mut Option<Value>, value: &str) {
    let value = Value::String(value.to_owned());
    *seen = Some(match seen.take() {
        None => value,
        Some(Value::Array(mut all)) => {
            all.push(value);
            Value::Array(all)
        }
        Some(first) => Value::Array(vec![first, value]),
    });
}

/// The form field a one-segment JSON pointer names (`/Body` → `Body`, `/a~1b` → `a/b`);
/// `None` for the root pointer or a deeper one, which no form field matches.
fn field_name(pointer: &str) -> Option<String> {
    let token = pointer.strip_prefix('/')?;
    if token.contains('/') {
        return None;
    }
    // RFC 6901 §4: `~1` before `~0`, so `~01` is `~1`, not `/`.
    Some(token.replace("~1", "/").replace("~0", "~"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The default alphabet in code order, 3GPP TS 23.038 §6.2.1, with the escape at 0x1B
    /// left out: 127 characters.
    const BASIC: &str = concat!(
        "@£$¥èéùìòÇ\nØø\rÅå",
        "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ",
        " !\"#¤%&'()*+,-./",
        "0123456789:;<=>?",
        "¡ABCDEFGHIJKLMNO",
        "PQRSTUVWXYZÄÖÑÜ§",
        "¿abcdefghijklmno",
        "pqrstuvwxyzäöñüà",
    );
    const EXTENSION: &str = "\u{0C}^{}\\[~]|€";

    fn spec(segments: Option<&str>, recipients: Option<&str>) -> Cost {
        Cost::new(&CostSpec {
            segments: segments.map(str::to_owned),
            recipients: recipients.map(str::to_owned),
        })
    }

    fn twilio() -> Cost {
        spec(Some("/Body"), Some("/To"))
    }

    #[test]
    fn the_gsm_table_is_exactly_23_038() {
        assert_eq!(BASIC.chars().count(), 127);
        for c in BASIC.chars() {
            assert_eq!(septets(c), Some(1), "{c:?} is in the basic set");
        }
        for c in EXTENSION.chars() {
            assert_eq!(septets(c), Some(2), "{c:?} is in the extension table");
        }
        // Every other character below U+0400 (ASCII, Latin-1, Greek) is outside it, and so
        // are the look-alikes senders type by accident.
        let inside: String = [BASIC, EXTENSION].concat();
        for c in ('\0'..'\u{0400}').chain(['ç', '’', '“', '\u{A0}', '\u{2126}', '…', '\u{1B}'])
        {
            if !inside.contains(c) {
                assert_eq!(septets(c), None, "{c:?} is not GSM-7");
            }
        }
    }

    #[test]
    fn gsm7_parts_at_160_and_153() {
        for (len, parts) in [
            (1, 1),
            (160, 1),
            (161, 2),
            (306, 2),
            (307, 3),
            (459, 3),
            (460, 4),
        ] {
            assert_eq!(segments(&"a".repeat(len)), parts, "{len} septets");
        }
    }

    #[test]
    fn the_whole_basic_set_is_one_gsm7_part() {
        // 127 septets: GSM-7 fits one part, UCS-2 (70 units) would need two.
        assert_eq!(segments(BASIC), 1);
    }

    #[test]
    fn extension_characters_take_two_septets() {
        assert_eq!(segments(&"€".repeat(80)), 1, "160 septets");
        assert_eq!(segments(&"€".repeat(81)), 2, "162 septets");
        assert_eq!(segments(&format!("{}{{", "a".repeat(158))), 1);
        assert_eq!(segments(&format!("{}{{", "a".repeat(159))), 2);
        assert_eq!(segments("\u{0C}"), 1);
    }

    #[test]
    fn an_extension_character_never_straddles_two_parts() {
        // 306 septets, which would be 2 × 153 if the escape and `€` could be split.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(segments(&text), 3);
        // Ending a part exactly: 151 + 2 = 153, then 153.
        let text = format!("{}€{}", "a".repeat(151), "a".repeat(153));
        assert_eq!(segments(&text), 2);
    }

    #[test]
    fn ucs2_parts_at_70_and_67() {
        // `я` is in the BMP and not GSM-7: one UTF-16 unit.
        for (len, parts) in [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3)] {
            assert_eq!(segments(&"я".repeat(len)), parts, "{len} units");
        }
        // One non-GSM character turns a GSM-7 text into UCS-2.
        assert_eq!(segments(&"a".repeat(70)), 1);
        assert_eq!(segments(&format!("{}ç", "a".repeat(70))), 2);
    }

    #[test]
    fn a_surrogate_pair_counts_two_units_and_is_never_split() {
        assert_eq!(segments(&"😀".repeat(35)), 1, "70 units");
        assert_eq!(segments(&"😀".repeat(36)), 2, "72 units");
        // 134 units, 2 × 67 if the pair could straddle the boundary at 67.
        let text = format!("{}😀{}", "я".repeat(66), "я".repeat(66));
        assert_eq!(segments(&text), 3);
        let text = format!("{}😀{}", "я".repeat(65), "я".repeat(67));
        assert_eq!(segments(&text), 2);
    }

    #[test]
    fn an_empty_text_is_one_segment() {
        assert_eq!(segments(""), 1);
    }

    #[test]
    fn recipients_of_arrays_strings_and_scalars() {
        assert_eq!(recipients(&json!(["+1", "+2", "+3"])), 3);
        assert_eq!(recipients(&json!(["+1", "", " ", null, "+2"])), 2);
        assert_eq!(recipients(&json!([])), 1);
        assert_eq!(recipients(&json!("+1,+2, +3")), 3);
        assert_eq!(recipients(&json!("+1,,+2,")), 2);
        assert_eq!(recipients(&json!("+1")), 1);
        assert_eq!(recipients(&json!("")), 1);
        assert_eq!(recipients(&json!(15551234567u64)), 1);
    }

    #[test]
    fn a_json_body_costs_segments_times_recipients() {
        let body = json!({
            "message": { "text": "x".repeat(161) },
            "to": ["+1", "+2", "+3"],
        })
        .to_string();
        let s = spec(Some("/message/text"), Some("/to"));
        assert_eq!(cost(&s, "application/json", body.as_bytes()), Ok(6));
        assert_eq!(
            cost(&s, "Application/JSON; charset=utf-8", body.as_bytes()),
            Ok(6)
        );
        assert_eq!(cost(&s, "application/vnd.api+json", body.as_bytes()), Ok(6));
        // No content type: the body looks like JSON.
        assert_eq!(cost(&s, "", format!("  {body}").as_bytes()), Ok(6));
        // Only one pointer set, or one that addresses nothing: the other contributes 1.
        assert_eq!(cost(&spec(None, Some("/to")), "", body.as_bytes()), Ok(3));
        assert_eq!(
            cost(&spec(Some("/nope"), Some("/to")), "", body.as_bytes()),
            Ok(3)
        );
        assert_eq!(
            cost(&spec(Some("/message/text"), None), "", body.as_bytes()),
            Ok(2)
        );
    }

    #[test]
    fn a_json_null_is_an_absent_field() {
        let body = br#"{"Body":null,"To":null}"#;
        assert_eq!(cost(&twilio(), "application/json", body), Ok(1));
    }

    #[test]
    fn a_top_level_array_is_addressed_by_the_root_pointer() {
        let body = br#"["+1","+2"]"#;
        assert_eq!(cost(&spec(None, Some("")), "application/json", body), Ok(2));
    }

    #[test]
    fn a_form_body_is_percent_decoded_with_plus_as_space() {
        // 153 `a` + space + 6 more = 160 septets: one part only if `+` decodes to one space.
        let body = format!("To=%2B15551234567&Body={}+abcdef", "a".repeat(153));
        let ct = "application/x-www-form-urlencoded";
        assert_eq!(cost(&twilio(), ct, body.as_bytes()), Ok(1));
        // `%E2%82%AC` is `€`: 2 septets, so 161 and two parts.
        let body = format!("Body={}%E2%82%AC", "a".repeat(159));
        assert_eq!(cost(&twilio(), ct, body.as_bytes()), Ok(2));
        // `%D1%8F` is `я`: UCS-2, 71 units.
        let body = format!("Body={}", "%D1%8F".repeat(71));
        assert_eq!(cost(&twilio(), ct, body.as_bytes()), Ok(2));
    }

    #[test]
    fn a_repeated_form_field_is_a_list_of_recipients() {
        let ct = "application/x-www-form-urlencoded; charset=UTF-8";
        let body = format!("To=%2B1&Body={}&To=%2B2&To=%2B3", "a".repeat(161));
        assert_eq!(cost(&twilio(), ct, body.as_bytes()), Ok(6));
        // One field holding a comma-separated list counts the same.
        assert_eq!(cost(&twilio(), ct, b"To=%2B1%2C%2B2,%2B3&Body=hi"), Ok(3));
        // Fields the pointers do not name do not count, nor does a field missing.
        assert_eq!(cost(&twilio(), ct, b"From=%2B9&StatusCallback=x"), Ok(1));
        assert_eq!(cost(&twilio(), ct, b""), Ok(1));
    }

    #[test]
    fn a_form_field_name_is_the_unescaped_pointer_token() {
        let ct = "application/x-www-form-urlencoded";
        let s = spec(None, Some("/a~1b~0c"));
        assert_eq!(cost(&s, ct, b"a%2Fb~c=1,2"), Ok(2));
        // A deeper pointer names no form field.
        assert_eq!(cost(&spec(None, Some("/a/b")), ct, b"a=1,2"), Ok(1));
        assert_eq!(field_name("/~01"), Some("~1".to_owned()));
    }

    #[test]
    fn unreadable_bodies() {
        let s = twilio();
        for (ct, body) in [
            ("application/json", &b"{\"Body\": \"hi\""[..]),
            ("application/json", b"Body=hi&To=1"),
            ("application/json", b""),
            ("application/problem+json", b"\xff\xfe{}"),
            ("", b"Body=hi&To=1"),
            ("text/plain", b"hello"),
            ("", b"{not json}"),
            ("", b"[1, 2,"),
        ] {
            assert_eq!(cost(&s, ct, body), Err(Unreadable::Body), "{ct:?} {body:?}");
        }
    }

    #[test]
    fn values_of_the_wrong_type_are_unreadable() {
        let ct = "application/json";
        for body in [
            &br#"{"Body": 42}"#[..],
            br#"{"Body": ["hi"]}"#,
            br#"{"Body": {"text": "hi"}}"#,
            br#"{"Body": true}"#,
            br#"{"To": {"number": "+1"}}"#,
        ] {
            assert_eq!(cost(&twilio(), ct, body), Err(Unreadable::WrongType));
        }
        // A repeated text field is two texts, not one.
        let form = "application/x-www-form-urlencoded";
        assert_eq!(
            cost(&twilio(), form, b"Body=a&Body=b"),
            Err(Unreadable::WrongType)
        );
    }

    #[test]
    fn no_pointers_cost_one_without_reading_the_body() {
        assert_eq!(cost(&Cost::default(), "text/plain", b"\xff"), Ok(1));
        assert_eq!(cost(&spec(None, None), "text/plain", b"\xff"), Ok(1));
    }

    #[test]
    fn the_cost_saturates() {
        // 5,000 parts × 1,000,000 recipients is past `u32::MAX`.
        let body = json!({ "Body": "a".repeat(153 * 5_000), "To": "1,".repeat(1_000_000) });
        let body = body.to_string();
        assert_eq!(segments(&"a".repeat(153 * 5_000)), 5_000);
        assert_eq!(
            cost(&twilio(), "application/json", body.as_bytes()),
            Ok(u32::MAX)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn cost_never_panics_on_any_bytes(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            ct in prop_oneof![
                Just(""),
                Just("application/json"),
                Just("application/x-www-form-urlencoded"),
                Just("text/plain"),
            ],
        ) {
            let _ = cost(&twilio(), ct, &body);
            let _ = cost(&spec(Some(""), Some("/0")), ct, &body);
        }

        #[test]
        fn cost_never_panics_on_json_shaped_bytes(
            inner in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut body = br#"{"Body":""#.to_vec();
            body.extend_from_slice(&inner);
            body.extend_from_slice(br#"","To":"+1"}"#);
            let _ = cost(&twilio(), "application/json", &body);
        }

        #[test]
        fn any_text_and_list_cost_their_product(text in ".{0,400}", to in 0usize..20) {
            let list: Vec<String> = (0..to).map(|i| format!("+1{i}")).collect();
            let body = json!({ "Body": text, "To": list }).to_string();
            let want = segments(&text) * (to.max(1) as u32);
            prop_assert_eq!(cost(&twilio(), "application/json", body.as_bytes()), Ok(want));
        }

        #[test]
        fn segments_match_the_closed_form_without_two_unit_characters(
            text in "[a-zA-Z0-9 @£Δ]{0,800}|[a-zяж]{0,400}[я]",
        ) {
            // With only 1-unit characters, packing in order is plain division.
            let n = text.chars().count() as u32;
            let (single, part) = if text.contains('я') { (70, 67) } else { (160, 153) };
            let want = if n <= single { 1 } else { n.div_ceil(part) };
            prop_assert_eq!(segments(&text), want);
        }
    }
}
