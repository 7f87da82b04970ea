// The GixdrtRoIAlign TensorRT plugin (see roi_align_plugin.h): shape and format rules for the builder, the CUDA
// kernel of csrc/roi_align/roi_align_cuda.cu at run time, and the loadLibrary entry points.
//
// Every TensorRT-facing method is noexcept: errors are reported through the logger TensorRT hands over in
// setLoggerFinder (stderr when there is none) and a non-zero status, nullptr or false, never an exception.
#include "trt/roi_align_plugin.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <sstream>

#include "roi_align/roi_align.h"

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IDimensionExpr;
using nvinfer1::IExprBuilder;
using nvinfer1::ILogger;
using nvinfer1::ILoggerFinder;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginCreatorInterface;
using nvinfer1::IPluginResourceContext;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;
using nvinfer1::TensorRTPhase;

namespace {

// Set by TensorRT through setLoggerFinder; constant-initialised, so loading the library runs no constructor.
std::atomic<ILoggerFinder*> g_logger_finder{nullptr};

void emit(ILogger::Severity severity, std::string const& message) noexcept {
  try {
    std::string const line = std::string(gixdrt::trt::kPluginNamespace) + "::" + gixdrt::trt::kPluginName + ": " +
                             message;
    ILoggerFinder* finder = g_logger_finder.load();
    ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;  // on the calling thread, as documented
    if (logger != nullptr) {
      logger->log(severity, line.c_str());
    } else if (severity == ILogger::Severity::kINTERNAL_ERROR || severity == ILogger::Severity::kERROR ||
               severity == ILogger::Severity::kWARNING) {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  } catch (...) {  // logging must never throw out of a noexcept method
  }
}

void log_error(std::string const& message) noexcept { emit(ILogger::Severity::kERROR, message); }

std::string dims_str(nvinfer1::Dims const& d) {
  std::string s = "[";
  for (int32_t i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
  return s + "]";
}

// The layout checks shared by configurePlugin (where -1 marks a dimension known only at run time) and
// onShapeChange / enqueue (all dimensions known). Returns an empty string when the shapes are acceptable.
std::string check_input_dims(nvinfer1::Dims const& features, nvinfer1::Dims const& rois) {
  if (features.nbDims != 4) return "features must be 4-D [N, C, H, W], got " + dims_str(features);
  if (rois.nbDims != 2 || (rois.d[1] != 5 && rois.d[1] != -1))
    return "rois must be [K, 5] (batch index, x0, y0, x1, y1), got " + dims_str(rois);
  return {};
}

template <typename T>
T read_scalar(void const* data) {
  T value;
  std::memcpy(&value, data, sizeof(T));
  return value;
}

}  // namespace

namespace gixdrt::trt {

// ---------------------------------------------------------------------------------------------------------------
// fields

std::string parse_fields(PluginFieldCollection const* fc, RoIAlignAttrs& attrs) {
  attrs = RoIAlignAttrs{};
  if (fc == nullptr) return "no field collection";
  if (fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr)) return "malformed field collection";
  bool have_out_h = false, have_out_w = false, have_scale_y = false, have_scale_x = false;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    if (f.name == nullptr) return "field " + std::to_string(i) + " has no name";
    std::string const name(f.name);
    auto expect = [&](PluginFieldType type, char const* type_name) -> std::string {
      if (f.type != type)
        return "field '" + name + "' must be " + type_name + ", got PluginFieldType " +
               std::to_string(static_cast<int32_t>(f.type));
      if (f.length != 1 || f.data == nullptr)
        return "field '" + name + "' must hold exactly one value, got length " + std::to_string(f.length);
      return {};
    };
    std::string error;
    if (name == kFieldOutH) {
      if ((error = expect(PluginFieldType::kINT32, "int32")).empty()) attrs.out_h = read_scalar<int32_t>(f.data);
      have_out_h = true;
    } else if (name == kFieldOutW) {
      if ((error = expect(PluginFieldType::kINT32, "int32")).empty()) attrs.out_w = read_scalar<int32_t>(f.data);
      have_out_w = true;
    } else if (name == kFieldScaleY) {
      if ((error = expect(PluginFieldType::kFLOAT32, "float32")).empty()) attrs.scale_y = read_scalar<float>(f.data);
      have_scale_y = true;
    } else if (name == kFieldScaleX) {
      if ((error = expect(PluginFieldType::kFLOAT32, "float32")).empty()) attrs.scale_x = read_scalar<float>(f.data);
      have_scale_x = true;
    } else if (name == kFieldSamplingRatio) {
      if ((error = expect(PluginFieldType::kINT32, "int32")).empty())
        attrs.sampling_ratio = read_scalar<int32_t>(f.data);
    } else if (name == kFieldAligned) {
      if ((error = expect(PluginFieldType::kINT32, "int32")).empty()) attrs.aligned = read_scalar<int32_t>(f.data);
    } else {
      return "unknown field '" + name + "' (expected out_h, out_w, scale_y, scale_x, sampling_ratio, aligned)";
    }
    if (!error.empty()) return error;
  }
  std::string missing;
  if (!have_out_h) missing += " out_h";
  if (!have_out_w) missing += " out_w";
  if (!have_scale_y) missing += " scale_y";
  if (!have_scale_x) missing += " scale_x";
  if (!missing.empty()) return "missing field(s):" + missing;
  if (attrs.out_h < 1 || attrs.out_w < 1)
    return "output size must be ≥ 1 × 1, got " + std::to_string(attrs.out_h) + " × " + std::to_string(attrs.out_w);
  if (!(std::isfinite(attrs.scale_y) && attrs.scale_y > 0.0f && std::isfinite(attrs.scale_x) && attrs.scale_x > 0.0f))
    return "scale_y and scale_x must be finite and > 0, got " + std::to_string(attrs.scale_y) + " and " +
           std::to_string(attrs.scale_x);
  if (attrs.aligned != 0 && attrs.aligned != 1) return "aligned must be 0 or 1, got " + std::to_string(attrs.aligned);
  return {};
}

// ---------------------------------------------------------------------------------------------------------------
// plugin

RoIAlignPlugin::RoIAlignPlugin(RoIAlignAttrs const& attrs) : attrs_(attrs) {
  std::ostringstream s;
  s << "out " << attrs_.out_h << "x" << attrs_.out_w << ", scale (y " << attrs_.scale_y << ", x " << attrs_.scale_x
    << "), sampling_ratio " << attrs_.sampling_ratio << ", aligned " << attrs_.aligned;
  metadata_ = s.str();
}

IPluginCapability* RoIAlignPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kCORE:
      return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD:
      return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME:
      return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

IPluginV3* RoIAlignPlugin::clone() noexcept {
  try {
    return new RoIAlignPlugin(attrs_);  // no state besides the attributes: shapes come with every call
  } catch (std::exception const& e) {
    log_error(std::string("clone failed: ") + e.what());
  } catch (...) {
    log_error("clone failed");
  }
  return nullptr;
}

char const* RoIAlignPlugin::getPluginName() const noexcept { return kPluginName; }
char const* RoIAlignPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* RoIAlignPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t RoIAlignPlugin::getNbOutputs() const noexcept { return 1; }

int32_t RoIAlignPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                           int32_t nbInputs) const noexcept {
  if (outputTypes == nullptr || nbOutputs != 1 || nbInputs != 2) {
    log_error("getOutputDataTypes: expected 2 inputs (features, rois) and 1 output, got " + std::to_string(nbInputs) +
              " and " + std::to_string(nbOutputs));
    return -1;
  }
  if (inputTypes != nullptr && (inputTypes[0] != DataType::kFLOAT || inputTypes[1] != DataType::kFLOAT)) {
    log_error("features and rois must be float32");
    return -1;
  }
  outputTypes[0] = DataType::kFLOAT;
  return 0;
}

int32_t RoIAlignPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                                        int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
                                        IExprBuilder& exprBuilder) noexcept {
  try {
    if (inputs == nullptr || outputs == nullptr || nbInputs != 2 || nbOutputs != 1 || nbShapeInputs != 0) {
      log_error("getOutputShapes: expected inputs (features, rois), no shape inputs and 1 output");
      return -1;
    }
    if (inputs[0].nbDims != 4 || inputs[1].nbDims != 2) {
      log_error("features must be 4-D [N, C, H, W] and rois 2-D [K, 5], got " + std::to_string(inputs[0].nbDims) +
                "-D and " + std::to_string(inputs[1].nbDims) + "-D");
      return -1;
    }
    IDimensionExpr const* row = inputs[1].d[1];
    if (row != nullptr && row->isConstant() && row->getConstantValue() != 5) {
      log_error("rois must be [K, 5] (batch index, x0, y0, x1, y1), got rows of " +
                std::to_string(row->getConstantValue()));
      return -1;
    }
    // [K, C, out_h, out_w]: K from the RoIs, C from the features, the bins from the fields
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[1].d[0];
    outputs[0].d[1] = inputs[0].d[1];
    outputs[0].d[2] = exprBuilder.constant(attrs_.out_h);
    outputs[0].d[3] = exprBuilder.constant(attrs_.out_w);
    if (outputs[0].d[2] == nullptr || outputs[0].d[3] == nullptr) {
      log_error("getOutputShapes: the expression builder returned no constant");
      return -1;
    }
    return 0;
  } catch (...) {
    log_error("getOutputShapes failed");
    return -1;
  }
}

bool RoIAlignPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                               int32_t nbOutputs) noexcept {
  if (inOut == nullptr || nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  PluginTensorDesc const& desc = inOut[pos].desc;
  return desc.type == DataType::kFLOAT && desc.format == TensorFormat::kLINEAR;  // linear float32 only
}

int32_t RoIAlignPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                        DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  try {
    if (in == nullptr || out == nullptr || nbInputs != 2 || nbOutputs != 1) {
      log_error("configurePlugin: expected 2 inputs (features, rois) and 1 output");
      return -1;
    }
    std::string const error = check_input_dims(in[0].desc.dims, in[1].desc.dims);
    if (!error.empty()) {
      log_error("configurePlugin: " + error);
      return -1;
    }
    return 0;  // nothing to choose: one kernel for every shape
  } catch (...) {
    log_error("configurePlugin failed");
    return -1;
  }
}

size_t RoIAlignPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
                                        DynamicPluginTensorDesc const* /*outputs*/,
                                        int32_t /*nbOutputs*/) const noexcept {
  return 0;
}

int32_t RoIAlignPlugin::getNbTactics() noexcept { return 0; }  // only TensorRT's default tactic 0

int32_t RoIAlignPlugin::getValidTactics(int32_t* /*tactics*/, int32_t /*nbTactics*/) noexcept { return 0; }

char const* RoIAlignPlugin::getMetadataString() noexcept { return metadata_.c_str(); }

int32_t RoIAlignPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                                      int32_t nbOutputs) noexcept {
  try {
    if (in == nullptr || out == nullptr || nbInputs != 2 || nbOutputs != 1) {
      log_error("onShapeChange: expected 2 inputs (features, rois) and 1 output");
      return -1;
    }
    std::string const error = check_input_dims(in[0].dims, in[1].dims);
    if (!error.empty() || in[1].dims.d[1] != 5) {
      log_error("onShapeChange: " + (error.empty() ? "rois must be [K, 5], got " + dims_str(in[1].dims) : error));
      return -1;
    }
    return 0;
  } catch (...) {
    log_error("onShapeChange failed");
    return -1;
  }
}

int32_t RoIAlignPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                                void const* const* inputs, void* const* outputs, void* /*workspace*/,
                                cudaStream_t stream) noexcept {
  try {
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr) {
      log_error("enqueue: missing tensor descriptions or buffers");
      return -1;
    }
    nvinfer1::Dims const& fd = inputDesc[0].dims;
    nvinfer1::Dims const& rd = inputDesc[1].dims;
    std::string const error = check_input_dims(fd, rd);
    if (!error.empty() || rd.d[1] != 5) {
      log_error("enqueue: " + (error.empty() ? "rois must be [K, 5], got " + dims_str(rd) : error));
      return -1;
    }
    nvinfer1::Dims const& od = outputDesc[0].dims;
    if (od.nbDims != 4 || od.d[0] != rd.d[0] || od.d[1] != fd.d[1] || od.d[2] != attrs_.out_h ||
        od.d[3] != attrs_.out_w) {
      log_error("enqueue: output is " + dims_str(od) + ", expected [K, C, out_h, out_w] = [" + std::to_string(rd.d[0]) +
                ", " + std::to_string(fd.d[1]) + ", " + std::to_string(attrs_.out_h) + ", " +
                std::to_string(attrs_.out_w) + "]");
      return -1;
    }
    roi_align::Params p;
    p.n = fd.d[0];
    p.c = fd.d[1];
    p.h = fd.d[2];
    p.w = fd.d[3];
    p.k = rd.d[0];
    p.out_h = attrs_.out_h;
    p.out_w = attrs_.out_w;
    p.scale_y = static_cast<double>(attrs_.scale_y);
    p.scale_x = static_cast<double>(attrs_.scale_x);
    p.sampling_ratio = attrs_.sampling_ratio;
    p.aligned = attrs_.aligned != 0;
    // RoIs with a batch index outside [0, N) pool to NaN (the kernel cannot raise); K = 0 or C = 0 launch nothing
    roi_align::forward_cuda(static_cast<float const*>(inputs[0]), static_cast<float const*>(inputs[1]),
                            static_cast<float*>(outputs[0]), p, static_cast<void*>(stream));
    return 0;
  } catch (std::exception const& e) {
    log_error(std::string("enqueue: ") + e.what());
  } catch (...) {
    log_error("enqueue failed");
  }
  return -1;
}

IPluginV3* RoIAlignPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept {
  return clone();  // no per-context resources
}

PluginFieldCollection const* RoIAlignPlugin::getFieldsToSerialize() noexcept {
  try {
    // rebuilt on every call so that the pointers always point into this object's attributes
    serialized_.clear();
    serialized_.emplace_back(kFieldOutH, &attrs_.out_h, PluginFieldType::kINT32, 1);
    serialized_.emplace_back(kFieldOutW, &attrs_.out_w, PluginFieldType::kINT32, 1);
    serialized_.emplace_back(kFieldScaleY, &attrs_.scale_y, PluginFieldType::kFLOAT32, 1);
    serialized_.emplace_back(kFieldScaleX, &attrs_.scale_x, PluginFieldType::kFLOAT32, 1);
    serialized_.emplace_back(kFieldSamplingRatio, &attrs_.sampling_ratio, PluginFieldType::kINT32, 1);
    serialized_.emplace_back(kFieldAligned, &attrs_.aligned, PluginFieldType::kINT32, 1);
    serialized_fc_.nbFields = static_cast<int32_t>(serialized_.size());
    serialized_fc_.fields = serialized_.data();
    return &serialized_fc_;
  } catch (...) {
    log_error("getFieldsToSerialize failed");
    return nullptr;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// creator

RoIAlignPluginCreator::RoIAlignPluginCreator() {
  fields_.emplace_back(kFieldOutH, nullptr, PluginFieldType::kINT32, 1);
  fields_.emplace_back(kFieldOutW, nullptr, PluginFieldType::kINT32, 1);
  fields_.emplace_back(kFieldScaleY, nullptr, PluginFieldType::kFLOAT32, 1);
  fields_.emplace_back(kFieldScaleX, nullptr, PluginFieldType::kFLOAT32, 1);
  fields_.emplace_back(kFieldSamplingRatio, nullptr, PluginFieldType::kINT32, 1);
  fields_.emplace_back(kFieldAligned, nullptr, PluginFieldType::kINT32, 1);
  fc_.nbFields = static_cast<int32_t>(fields_.size());
  fc_.fields = fields_.data();
}

char const* RoIAlignPluginCreator::getPluginName() const noexcept { return kPluginName; }
char const* RoIAlignPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* RoIAlignPluginCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }
PluginFieldCollection const* RoIAlignPluginCreator::getFieldNames() noexcept { return &fc_; }

IPluginV3* RoIAlignPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc,
                                               TensorRTPhase /*phase*/) noexcept {
  // Build phase: the caller's fields; runtime phase: those getFieldsToSerialize returned. Both parse the same way.
  try {
    RoIAlignAttrs attrs;
    std::string const error = parse_fields(fc, attrs);
    if (!error.empty()) {
      log_error("createPlugin(" + std::string(name != nullptr ? name : "") + "): " + error);
      return nullptr;
    }
    return new RoIAlignPlugin(attrs);
  } catch (std::exception const& e) {
    log_error(std::string("createPlugin failed: ") + e.what());
  } catch (...) {
    log_error("createPlugin failed");
  }
  return nullptr;
}

}  // namespace gixdrt::trt

// ---------------------------------------------------------------------------------------------------------------
// loadLibrary entry points

extern "C" GIXDRT_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { g_logger_finder.store(finder); }

extern "C" GIXDRT_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static gixdrt::trt::RoIAlignPluginCreator creator;
  static IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
  return creators;
}
