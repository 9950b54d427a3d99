//! Logs and traces joined: [`SpanIds`] adds `trace_id` and `span_id` to
//! every line written while a span is current.
//!
//! It is a drain, not a value of the root logger, because values of the
//! logger are serialized by the asynchronous drain on its own thread, where
//! the writer's current span is unknown; a drain in front of it runs on the
//! thread that logs, and adds the ids to the record's own values, which are
//! serialized there.

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use slog::{BorrowedKV, Drain, OwnedKVList, Record, RecordStatic, Serializer, KV};

/// A drain that adds the ids of the current span to each record.
#[derive(Debug)]
pub struct SpanIds<D>(pub D);

impl<D: Drain> Drain for SpanIds<D> {
    type Ok = D::Ok;
    type Err = D::Err;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<D::Ok, D::Err> {
        let Some(ids) = Ids::current() else {
            return self.0.log(record, values);
        };
        let kv = (record.kv(), ids);
        let static_part = RecordStatic {
            location: record.location(),
            tag: record.tag(),
            level: record.level(),
        };
        let msg = record.msg();
        self.0
            .log(&Record::new(&static_part, msg, BorrowedKV(&kv)), values)
    }
}

/// The ids of a valid current span, as the hex strings tracing UIs show.
struct Ids {
    trace_id: String,
    span_id: String,
}

impl Ids {
    fn current() -> Option<Ids> {
        let cx = Context::current();
        if !cx.has_active_span() {
            return None;
        }
        let span = cx.span();
        let context = span.span_context();
        context.is_valid().then(|| Ids {
            trace_id: context.trace_id().to_string(),
            span_id: context.span_id().to_string(),
        })
    }
}

impl KV for Ids {
    fn serialize(&self, _record: &Record<'_>, serializer: &mut dyn Serializer) -> slog::Result {
        serializer.emit_str("span_id", &self.span_id)?;
        serializer.emit_str("trace_id", &self.trace_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::remote_context;
    use std::sync::{Arc, Mutex};

    /// Keeps the values of each record, as `key=value` lines.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl Drain for Capture {
        type Ok = ();
        type Err = slog::Never;

        fn log(&self, record: &Record<'_>, _: &OwnedKVList) -> Result<(), slog::Never> {
            struct Collect(Vec<String>);
            impl Serializer for Collect {
                fn emit_arguments(
                    &mut self,
                    key: slog::Key,
                    val: &std::fmt::Arguments<'_>,
                ) -> slog::Result {
                    self.0.push(format!("{key}={val}"));
                    Ok(())
                }
            }
            let mut collect = Collect(vec![format!("msg={}", record.msg())]);
            let _ = record.kv().serialize(record, &mut collect);
            self.0.lock().unwrap().push(collect.0.join(" "));
            Ok(())
        }
    }

    #[test]
    fn lines_carry_the_ids_of_the_current_span_and_only_then() {
        let capture = Capture::default();
        let logger = slog::Logger::root(SpanIds(capture.clone()).fuse(), slog::o!());
        slog::info!(logger, "outside"; "n" => 1);
        let cx = remote_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        {
            let _attached = cx.attach();
            slog::info!(logger, "inside"; "n" => 2);
        }
        let lines = capture.0.lock().unwrap().clone();
        assert_eq!(lines[0], "msg=outside n=1");
        assert!(lines[1].starts_with("msg=inside "), "{}", lines[1]);
        assert!(lines[1].contains(" n=2"), "{}", lines[1]);
        assert!(
            lines[1].contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].contains("span_id=00f067aa0ba902b7"),
            "{}",
            lines[1]
        );
    }
}
