//! Process set-up (`rsl_init`): a `tracing` subscriber that hands each formatted event to the
//! application's log callback and/or appends it to `<log_dir>/rsl.log`.

use crate::*;
use std::ffi::{c_char, CStr, CString};
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{OnceLock, RwLock};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Receives every log entry: `level` is RSL's `CallBackLogLevel` (0 Debug, 1 Info, 3 Warning,
/// 4 Error, 5 Alert), `message` a NUL-terminated line valid only during the call. It may be called from
/// any thread, concurrently.
pub type rsl_log_callback = Option<unsafe extern "C" fn(level: i32, message: *const c_char)>;

/// One log entry with where it comes from (`rsl_init_entries`); every pointer is valid only
/// during the call, NUL-terminated, never NULL.
#[repr(C)]
pub struct rsl_log_entry {
    /// RSL's `CallBackLogLevel`, as for `rsl_log_callback`.
    pub level: i32,
    /// RSL's log area: 2 (`LogID_Netlib`) for the transport and TLS, 3 (`LogID_RSLLIB`) else.
    pub log_id: i32,
    /// The source file that logged it.
    pub file: *const c_char,
    /// The module that logged it (Rust has no function name at run time).
    pub function: *const c_char,
    /// The line in `file`.
    pub line: u32,
    /// The entry's message alone.
    pub title: *const c_char,
    /// The whole line: level, module, message and the entry's other fields.
    pub message: *const c_char,
}

/// Receives every log entry with its source (`rsl_init_entries`); called from any thread,
/// concurrently.
pub type rsl_log_entry_callback = Option<unsafe extern "C" fn(entry: *const rsl_log_entry)>;

/// Where log entries go; replaced by each `rsl_init`.
struct Sink {
    callback: rsl_log_callback,
    entries: rsl_log_entry_callback,
    file: Option<File>,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
static DEBUG: AtomicBool = AtomicBool::new(false);
/// Whether our subscriber is the process's (set by the first `rsl_init`).
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Formats an event's fields: the message, then ` name=value` for the others; and the
/// message alone.
#[derive(Default)]
struct Fields {
    all: String,
    message: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.all, "{value:?}");
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.all, " {}={value:?}", field.name());
        }
    }
}

fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

struct CallbackLayer;

/// A span's name and fields as a line shows them: `rsl{ring=0 member=1}: `.
struct SpanText(String);

/// The spans an event is in, outermost first (a replica's thread: its ring and member).
fn span_prefix<S: Subscriber + for<'a> LookupSpan<'a>>(event: &Event<'_>, ctx: &Context<'_, S>) -> String {
    let Some(scope) = ctx.event_scope(event) else { return String::new() };
    scope.from_root().filter_map(|span| span.extensions().get::<SpanText>().map(|t| t.0.clone())).collect()
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for CallbackLayer {
    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        *meta.level() <= Level::INFO || DEBUG.load(Relaxed)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let text = SpanText(format!("{}{{{}}}: ", attrs.metadata().name(), fields.all.trim_start()));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(text);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = format!("{} {}: {}{}", meta.level(), meta.target(), span_prefix(event, &ctx), fields.all);
        let (callback, entries) = {
            let Ok(sink) = SINK.read() else { return };
            let Some(sink) = sink.as_ref() else { return };
            if let Some(mut file) = sink.file.as_ref() {
                let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let _ = writeln!(file, "{}.{:03} {line}", at.as_secs(), at.subsec_millis());
            }
            (sink.callback, sink.entries)
        };
        let level = match *meta.level() {
            Level::ERROR if meta.target() == rsl_engine::ALERT_TARGET => 5,
            Level::ERROR => 4,
            Level::WARN => 3,
            Level::INFO => 1,
            _ => 0,
        };
        let text = c_text(&line);
        // Called without the lock, so that the callback may itself call `rsl_init`.
        if let Some(callback) = callback {
            // SAFETY: the application's log callback, given a NUL-terminated line that lives
            // for the call; the application accepts calls from any thread (`rsl_log_callback`).
            unsafe { callback(level, text.as_ptr()) };
        }
        if let Some(entries) = entries {
            let module = meta.module_path().unwrap_or(meta.target());
            let netlib = module.contains("transport") || module.contains("tls");
            let (file, function, title) = (c_text(meta.file().unwrap_or("")), c_text(module), c_text(&fields.message));
            let entry = rsl_log_entry {
                level,
                log_id: if netlib { 2 } else { 3 },
                file: file.as_ptr(),
                function: function.as_ptr(),
                line: meta.line().unwrap_or(0),
                title: title.as_ptr(),
                message: text.as_ptr(),
            };
            // SAFETY: as above; every string lives for the call (`rsl_log_entry_callback`).
            unsafe { entries(&entry) };
        }
    }
}

/// `RSLInit`: sets up logging for the whole process. Entries at Info and above (Debug too with
/// `log_debug`) go to `cb` (may be NULL) and are appended to `<log_dir>/rsl.log` (`log_dir`
/// may be NULL; it is created if needed). Call it before the first replica; calling it again
/// replaces the destinations. Errors: `RSL_E_IO` (the log file cannot be opened),
/// `RSL_E_STATE` (another `tracing` subscriber already owns the process).
///
/// # Safety
/// `log_dir` is NULL or NUL-terminated; `cb` is NULL or a function callable from any thread.
#[no_mangle]
pub unsafe extern "C" fn rsl_init(log_dir: *const c_char, log_debug: bool, cb: rsl_log_callback) -> rsl_status {
    // SAFETY: forwarded from the caller.
    unsafe { init(log_dir, log_debug, cb, None) }
}

/// `rsl_init`, with each entry handed to `cb` with its source file, module, line, log area
/// and message (`rsl_log_entry`), as RSL's `LogEntryCallback` gets them.
///
/// # Safety
/// As `rsl_init`.
#[no_mangle]
pub unsafe extern "C" fn rsl_init_entries(log_dir: *const c_char, log_debug: bool, cb: rsl_log_entry_callback) -> rsl_status {
    // SAFETY: forwarded from the caller.
    unsafe { init(log_dir, log_debug, None, cb) }
}

/// `rsl_init`'s body, with either callback.
///
/// # Safety
/// As `rsl_init`.
unsafe fn init(log_dir: *const c_char, log_debug: bool, cb: rsl_log_callback, entries: rsl_log_entry_callback) -> rsl_status {
    guard(|| {
        let file = if log_dir.is_null() {
            None
        } else {
            // SAFETY: non-NULL and NUL-terminated, per the caller.
            let dir = Path::new(std::ffi::OsStr::from_bytes(unsafe { CStr::from_ptr(log_dir) }.to_bytes()));
            let opened = std::fs::create_dir_all(dir).and_then(|()| File::options().create(true).append(true).open(dir.join("rsl.log")));
            Some(opened.map_err(|e| fail(RSL_E_IO, format_args!("{}: {e}", dir.join("rsl.log").display())))?)
        };
        *SINK.write().map_err(|_| RSL_E_STATE)? = Some(Sink { callback: cb, entries, file });
        DEBUG.store(log_debug, Relaxed);
        let installed =
            *INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(tracing_subscriber::registry().with(CallbackLayer)).is_ok());
        // The level may have changed: callsites cache whether they are enabled.
        tracing::callsite::rebuild_interest_cache();
        if installed {
            Ok(())
        } else {
            Err(fail(RSL_E_STATE, "another tracing subscriber owns the process"))
        }
    })
}
