//! XML error bodies as a JSON view, so profile pointers and the generic detector read XML
//! the way they read JSON.
//!
//! The root element is the document itself (its name is dropped: Bandwidth names the root
//! after the resource, `<TNOptionOrderResponse>`, `<OrderResponse>`…). Each child element is
//! a key with its name as written; an element holding only text is a string, one with
//! children an object; repeated siblings of one name become an array, in order. Attributes,
//! comments, processing instructions and text beside child elements are dropped. So
//! `<R><RestException><Code>20404</Code></RestException></R>` reads as
//! `{"RestException":{"Code":"20404"}}` and `/RestException/Code` finds the code.

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Value};

/// Deepest element kept; deeper content is skipped (error documents are shallow, and the
/// bound keeps a hostile body from building a deep tree).
const MAX_DEPTH: usize = 16;
/// Most elements read; the rest of a larger document is ignored.
const MAX_ELEMENTS: usize = 4096;

/// One open element: its name, its children so far, its text so far.
struct Open {
    name: String,
    children: Map<String, Value>,
    text: String,
}

impl Open {
    fn new(name: String) -> Self {
        Open {
            name,
            children: Map::new(),
            text: String::new(),
        }
    }

    fn into_value(self) -> Value {
        if self.children.is_empty() {
            Value::String(self.text.split_whitespace().collect::<Vec<_>>().join(" "))
        } else {
            Value::Object(self.children)
        }
    }

    fn add(&mut self, name: String, v: Value) {
        match self.children.get_mut(&name) {
            None => {
                self.children.insert(name, v);
            }
            // Element values are strings or objects, so an array here is repeated siblings.
            Some(Value::Array(items)) => items.push(v),
            Some(prev) => {
                let first = prev.take();
                *prev = Value::Array(vec![first, v]);
            }
        }
    }
}

/// The JSON view of an XML document; `None` when the body is not well-formed XML with one
/// root element.
pub fn view(body: &str) -> Option<Value> {
    let mut reader = Reader::from_str(body);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Value> = None;
    let mut elements = 0usize;
    let mut skipping = 0usize;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                if root.is_some() {
                    return None;
                }
                elements += 1;
                if skipping > 0 || stack.len() >= MAX_DEPTH || elements > MAX_ELEMENTS {
                    skipping += 1;
                    continue;
                }
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                stack.push(Open::new(name));
            }
            Event::Empty(e) => {
                elements += 1;
                if skipping > 0 || elements > MAX_ELEMENTS {
                    continue;
                }
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match stack.last_mut() {
                    Some(parent) => parent.add(name, Value::String(String::new())),
                    None if root.is_none() => root = Some(Value::Object(Map::new())),
                    None => return None,
                }
            }
            Event::End(_) => {
                if skipping > 0 {
                    skipping -= 1;
                    continue;
                }
                let mut done = stack.pop()?;
                let name = std::mem::take(&mut done.name);
                let v = done.into_value();
                match stack.last_mut() {
                    Some(parent) => parent.add(name, v),
                    None => root = Some(v),
                }
            }
            Event::Text(t) => {
                if skipping > 0 {
                    continue;
                }
                if let Some(open) = stack.last_mut() {
                    open.text.push_str(&t.unescape().ok()?);
                } else if !t.iter().all(u8::is_ascii_whitespace) {
                    return None;
                }
            }
            Event::CData(c) => {
                if skipping > 0 {
                    continue;
                }
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&String::from_utf8_lossy(&c)),
                    None => return None,
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return None;
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn twilio_legacy() {
        let v = view("<?xml version='1.0' encoding='UTF-8'?>\n<TwilioResponse><RestException><Code>20404</Code><Message>The requested resource &amp; more was not found</Message><MoreInfo>https://www.twilio.com/docs/errors/20404</MoreInfo><Status>404</Status></RestException></TwilioResponse>");
        assert_eq!(
            v,
            Some(json!({"RestException": {"Code": "20404",
                "Message": "The requested resource & more was not found",
                "MoreInfo": "https://www.twilio.com/docs/errors/20404", "Status": "404"}}))
        );
    }

    #[test]
    fn repeated_siblings_are_an_array_and_a_lone_one_is_not() {
        let v = view("<R><Errors><Error><Code>1</Code></Error><Error><Code>2</Code></Error><Error><Code>3</Code></Error></Errors><One><Error><Code>9</Code></Error></One></R>");
        assert_eq!(
            v,
            Some(
                json!({"Errors": {"Error": [{"Code": "1"}, {"Code": "2"}, {"Code": "3"}]},
                "One": {"Error": {"Code": "9"}}})
            )
        );
    }

    #[test]
    fn cdata_attributes_and_white_space() {
        let v = view("<E a='1'>\n  <Message><![CDATA[a <b> c]]></Message>\n  <Empty/>\n  <M>  two\n words </M></E>");
        assert_eq!(
            v,
            Some(json!({"Message": "a <b> c", "Empty": "", "M": "two words"}))
        );
    }

    #[test]
    fn not_xml_is_none() {
        for s in [
            "",
            "plain text",
            "<a><b></a>",
            "<a>",
            "<a/><b/>",
            "<a></a><b></b>",
            "<a>&bogus;</a>",
            "text <a/>",
        ] {
            assert_eq!(view(s), None, "{s:?}");
        }
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let deep = "<a>".repeat(10_000) + &"</a>".repeat(10_000);
        assert!(view(&deep).is_some());
        let wide = format!("<r>{}</r>", "<e>x</e>".repeat(20_000));
        match view(&wide) {
            Some(Value::Object(m)) => {
                assert_eq!(m["e"].as_array().map(Vec::len), Some(MAX_ELEMENTS - 1))
            }
            other => panic!("{other:?}"),
        }
    }
}
