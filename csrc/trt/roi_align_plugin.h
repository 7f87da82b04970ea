// TensorRT plugin "GixdrtRoIAlign" (version "1", namespace "gixdrt"): the CUDA RoIAlign kernel of
// csrc/roi_align as an IPluginV3 layer (capabilities OneCore, OneBuild, OneRuntime) with its creator
// (IPluginCreatorV3One).
//
//   inputs : features float32[N, C, H, W], rois float32[K, 5] (batch index, x0, y0, x1, y1) in input pixels
//   output : float32[K, C, out_h, out_w]
//   fields : out_h, out_w (int32), scale_y, scale_x (float32: the anisotropic map scale fused in),
//            sampling_ratio (int32, ≤ 0 adaptive), aligned (int32 0/1)
//
// Linear float32 only, no workspace, no custom tactics. The shared library (target gixdrt_trt_plugins) exports
// only the two C entry points IPluginRegistry::loadLibrary looks for, getCreators and setLoggerFinder: nothing is
// registered when the library is loaded, nothing links against libnvinfer (every TensorRT type used here is an
// interface whose methods are virtual or inline in the headers).
//
// Written against the documented TensorRT 10 V3 plugin API. No difference between TensorRT 10 and 11 was found in
// the documentation of the classes used here (TensorRT 11 removes V2-plugin registry overloads and weak typing, not
// these), so the only version guard is NV_TENSORRT_MAJOR ≥ 10 below. It has not been compiled against real
// TensorRT headers nor run in this project yet.
#pragma once

#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <cstdint>
#include <string>
#include <vector>

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "gixdrt's TensorRT plugin implements IPluginV3 and needs TensorRT 10 or newer"
#endif

namespace gixdrt::trt {

inline constexpr char kPluginName[] = "GixdrtRoIAlign";
inline constexpr char kPluginVersion[] = "1";
inline constexpr char kPluginNamespace[] = "gixdrt";

// The plugin's parameters (its PluginFieldCollection, see kField* below).
struct RoIAlignAttrs {
  int32_t out_h = 16;
  int32_t out_w = 16;
  float scale_y = 1.0f;
  float scale_x = 1.0f;
  int32_t sampling_ratio = -1;  // ≤ 0: adaptive ceil(roi_size / bins)
  int32_t aligned = 0;          // 0: legacy (no half-pixel shift, RoI size clamped to ≥ 1), 1: aligned
};

inline constexpr char kFieldOutH[] = "out_h";
inline constexpr char kFieldOutW[] = "out_w";
inline constexpr char kFieldScaleY[] = "scale_y";
inline constexpr char kFieldScaleX[] = "scale_x";
inline constexpr char kFieldSamplingRatio[] = "sampling_ratio";
inline constexpr char kFieldAligned[] = "aligned";

// Parses a field collection (build phase: the caller's fields; runtime phase: getFieldsToSerialize's) into
// `attrs`, starting from the defaults. out_h, out_w, scale_y and scale_x are required; sampling_ratio defaults
// to -1 and aligned to 0. Returns an empty string on success, else what is wrong (unknown name, wrong type or
// length, missing field, value out of range).
std::string parse_fields(nvinfer1::PluginFieldCollection const* fc, RoIAlignAttrs& attrs);

class RoIAlignPlugin final : public nvinfer1::IPluginV3,
                             public nvinfer1::IPluginV3OneCore,
                             public nvinfer1::IPluginV3OneBuild,
                             public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit RoIAlignPlugin(RoIAlignAttrs const& attrs);
  ~RoIAlignPlugin() override = default;

  RoIAlignPlugin(RoIAlignPlugin const&) = delete;
  RoIAlignPlugin& operator=(RoIAlignPlugin const&) = delete;

  RoIAlignAttrs const& attrs() const noexcept { return attrs_; }

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
  int32_t getNbTactics() noexcept override;
  int32_t getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept override;
  char const* getMetadataString() noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  RoIAlignAttrs attrs_;
  std::string metadata_;                            // getMetadataString
  std::vector<nvinfer1::PluginField> serialized_;   // getFieldsToSerialize: points into attrs_
  nvinfer1::PluginFieldCollection serialized_fc_{};
};

class RoIAlignPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  RoIAlignPluginCreator();
  ~RoIAlignPluginCreator() override = default;

  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection fc_{};
};

}  // namespace gixdrt::trt

// The entry points IPluginRegistry::loadLibrary (Python: trt.get_plugin_registry().load_library) resolves in a
// plugin library. The creator is a function-local static, made on the first getCreators call.
#if defined(_WIN32)
#define GIXDRT_TRT_EXPORT __declspec(dllexport)
#else
#define GIXDRT_TRT_EXPORT __attribute__((visibility("default")))
#endif

extern "C" {
GIXDRT_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
GIXDRT_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
}
